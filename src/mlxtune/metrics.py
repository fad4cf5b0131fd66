"""Answer metrics: keyword accuracy, exact match, token F1, format compliance (pure Python,
no mlx; any model's text answers, chat or vision-language), and retrieval metrics (recall@k,
MRR).

Exact match and token F1 use SQuAD's normalisation (case, punctuation, articles, spaces).
Keywords keep their punctuation (`--show-config`, `0.05`, `/docs` are keywords in the
shipped data), so they are only case- and space-folded, and must appear as whole words.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GENERATION_METRICS = ("keyword_accuracy", "exact_match", "token_f1")
LOSS_METRICS = ("loss", "perplexity")
RETRIEVAL_METRICS = ("recall_at_1", "recall_at_5", "mrr")  # evaluate --task retrieval
FORMAT_METRICS = ("format_compliance", "field_exact_match")
METRICS = GENERATION_METRICS + FORMAT_METRICS + LOSS_METRICS + RETRIEVAL_METRICS
# What --min / --min-delta can gate on (format metrics need evaluate.output_schema).
GATE_METRICS = GENERATION_METRICS + FORMAT_METRICS

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


def schema_problem(text: str, schema: Mapping[str, Any] | None) -> str | None:
    """Why `text` is not a JSON value valid against `schema` (None: it is). Without a schema,
    any JSON value passes. Surrounding whitespace is allowed; code fences or prose are not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg} at char {e.pos})"
    if schema is None:
        return None
    import jsonschema

    validator = jsonschema.Draft202012Validator(dict(schema))
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"does not match the schema at {error.json_path}: {error.message}"


def format_compliance(prediction: str, schema: Mapping[str, Any] | None) -> float:
    """1.0 when the answer parses as JSON and validates against `schema`, else 0.0."""
    return 1.0 if schema_problem(prediction, schema) is None else 0.0


def field_matches(prediction: str, expected: str) -> dict[str, float]:
    """Per top-level field of the expected JSON object: 1.0 when the answer has the same
    value (JSON equality), else 0.0. Empty when the expected answer is not a JSON object."""
    try:
        gold = json.loads(expected)
    except json.JSONDecodeError:
        return {}
    if not isinstance(gold, dict):
        return {}
    try:
        pred = json.loads(prediction)
    except json.JSONDecodeError:
        pred = None
    if not isinstance(pred, dict):
        pred = {}
    return {k: 1.0 if k in pred and pred[k] == v else 0.0 for k, v in gold.items()}


def score_format(
    prediction: str, expected: str, schema: Mapping[str, Any] | None
) -> dict[str, float | None]:
    """The format metrics for one answer: compliance, and the mean per-field exact match
    (None when the expected answer is not a JSON object)."""
    fields = field_matches(prediction, expected)
    return {
        "format_compliance": format_compliance(prediction, schema),
        "field_exact_match": mean(fields.values()),
    }


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
