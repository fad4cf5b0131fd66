"""Answer metrics (keyword accuracy, exact match, token F1) and retrieval metrics (recall@k,
MRR), pure Python, no mlx.

Exact match and token F1 use SQuAD's normalisation (case, punctuation, articles, spaces).
Keywords keep their punctuation (`--show-config`, `0.05`, `/docs` are keywords in the
shipped data), so they are only case- and space-folded, and must appear as whole words.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

GENERATION_METRICS = ("keyword_accuracy", "exact_match", "token_f1")
LOSS_METRICS = ("loss", "perplexity")
RETRIEVAL_METRICS = ("recall_at_1", "recall_at_5", "mrr")  # evaluate --task retrieval
METRICS = GENERATION_METRICS + LOSS_METRICS + RETRIEVAL_METRICS

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_SPACES = re.compile(r"\s+")
# Typographic variants a model may produce for the ASCII the data uses.
_FOLD = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-"})


def fold(text: str) -> str:
    """Unicode-, case- and space-folded text (punctuation kept)."""
    text = unicodedata.normalize("NFKC", text).translate(_FOLD).casefold()
    return _SPACES.sub(" ", text).strip()


def normalize_answer(text: str) -> str:
    """SQuAD-style: folded, punctuation and articles removed, spaces collapsed."""
    text = fold(text).translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def keyword_present(keyword: str, text: str) -> bool:
    """`keyword` occurs in `text` as whole words (case- and space-insensitive)."""
    kw = fold(keyword)
    if not kw:
        return True
    left = r"(?<![0-9a-z])" if kw[0].isalnum() else ""
    right = r"(?![0-9a-z])" if kw[-1].isalnum() else ""
    return re.search(left + re.escape(kw) + right, fold(text)) is not None


def keyword_hit(prediction: str, keywords: Sequence[str]) -> float | None:
    """1.0 when every expected keyword is present, else 0.0; None when there are none."""
    if not keywords:
        return None
    return 1.0 if all(keyword_present(k, prediction) for k in keywords) else 0.0


def exact_match(prediction: str, expected: str) -> float:
    return 1.0 if normalize_answer(prediction) == normalize_answer(expected) else 0.0


def token_f1(prediction: str, expected: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(expected).split()
    if not pred or not gold:
        return 1.0 if pred == gold else 0.0
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, expected: str, keywords: Sequence[str]) -> dict[str, float | None]:
    """Every generation metric for one answer."""
    return {
        "keyword_accuracy": keyword_hit(prediction, keywords),
        "exact_match": exact_match(prediction, expected),
        "token_f1": token_f1(prediction, expected),
    }


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# ---------------------------------------------------------------------------------------------
# Retrieval: each query's rank is the 1-based position of its best relevant candidate.


def recall_at_k(ranks: Sequence[int], k: int) -> float | None:
    """Share of queries whose relevant candidate is among the top k; None for no queries."""
    return sum(r <= k for r in ranks) / len(ranks) if ranks else None


def mean_reciprocal_rank(ranks: Sequence[int]) -> float | None:
    return sum(1 / r for r in ranks) / len(ranks) if ranks else None


def retrieval_scores(ranks: Sequence[int]) -> dict[str, float | None]:
    """Every retrieval metric for a list of ranks."""
    return {
        "recall_at_1": recall_at_k(ranks, 1),
        "recall_at_5": recall_at_k(ranks, 5),
        "mrr": mean_reciprocal_rank(ranks),
    }
