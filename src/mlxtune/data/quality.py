"""`prepare.quality`: a score in [0, 1] per record from weighted factors, and a threshold.

Each factor is a plain function of the record's question and answer returning a value in
[0, 1]; the score is their weighted mean. The report says how many records each factor cost,
so a funnel like "1,012 extracted -> 46 kept" comes with its reasons.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlxtune import formats
from mlxtune.data import records as rec

if TYPE_CHECKING:
    from mlxtune.config import QualityConfig

FACTORS = ("explanation", "length", "not_copy", "repetition", "identifiers", "language")
HISTOGRAM_BINS = 10  # [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]

_WORD = re.compile(r"[^\W\d_]{2,}")
_CODE_BLOCK = re.compile(r"```([\w+-]*)\n(.*?)```", re.S)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_CALL = re.compile(r"\b([A-Za-z_][\w.]*)\(")
_IDENT = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*")
_CHAR_LOOP = re.compile(r"(.{2,40}?)\1{4,}", re.S)  # the same chunk 5+ times in a row
# Common English function words: prose with none of these is not English.
EN_STOPWORDS = frozenset(
    "the a an of to in and or is are was be it that this for on with as by at from not can "  # noqa: SIM905
    "you your its which what how when does do use uses used has have will if".split()
)


@dataclass
class Scored:
    """One record's score and the factor values behind it."""

    score: float
    factors: dict[str, float]

    def weakest(self, weights: dict[str, float]) -> list[str]:
        """Factors that cost this record something, worst first."""
        lacking = [f for f, v in self.factors.items() if weights.get(f, 0) > 0 and v < 1]
        return sorted(lacking, key=lambda f: (self.factors[f], f))


@dataclass
class QualityReport:
    threshold: float
    weights: dict[str, float]
    kept: int = 0
    dropped: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    dropped_by_factor: dict[str, int] = field(default_factory=dict)
    mean_factor: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        edges = [round(i / HISTOGRAM_BINS, 2) for i in range(HISTOGRAM_BINS + 1)]
        return {
            "threshold": self.threshold,
            "weights": self.weights,
            "scored": self.kept + self.dropped,
            "kept": self.kept,
            "dropped": self.dropped,
            "histogram": {"edges": edges, "counts": self.histogram},
            "dropped_by_factor": self.dropped_by_factor,
            "mean_factor": self.mean_factor,
        }


class Scorer:
    """Scores records against a vocabulary of identifiers named anywhere in the questions."""

    def __init__(self, cfg: QualityConfig, records: Sequence[dict[str, Any]]) -> None:
        self.cfg = cfg
        self.weights = {f: float(w) for f, w in cfg.weights.model_dump().items()}
        self.vocabulary: set[str] = set()
        for record in records:
            self.vocabulary.update(_identifiers_in(_prompt_text(record)))
            self.vocabulary.update(str(k) for k in record.get("keywords") or ())
        self._factors: dict[str, Callable[[str, str], float]] = {
            "explanation": self._explanation,
            "length": self._length,
            "not_copy": self._not_copy,
            "repetition": _repetition,
            "identifiers": self._identifiers,
            "language": self._language,
        }

    def score(self, record: dict[str, Any]) -> Scored:
        question, answer = _prompt_text(record), rec.answer(record)
        factors = {
            name: round(fn(question, answer), 3)
            for name, fn in self._factors.items()
            if self.weights[name] > 0
        }
        total = sum(self.weights[f] for f in factors)
        score = sum(self.weights[f] * v for f, v in factors.items()) / total
        if any(factors.get(f) == 0 for f in self.cfg.required):
            score = 0.0  # a copy or a loop is no training example, whatever else it has
        return Scored(round(score, 3), factors)

    # -- factors: each maps (question, answer) to [0, 1] ------------------------------------

    def _explanation(self, _question: str, answer: str) -> float:
        words = len(_WORD.findall(_prose(answer)))
        return min(1.0, words / self.cfg.explanation_words)

    def _length(self, _question: str, answer: str) -> float:
        low, high = self.cfg.answer_chars
        return 1.0 if low <= len(answer) <= high else 0.0

    def _not_copy(self, question: str, answer: str) -> float:
        q, a = rec.fold(question), rec.fold(answer)
        if not a:
            return 0.0
        if a in q:
            return 0.0
        ratio = difflib.SequenceMatcher(None, q, a, autojunk=False).ratio()
        limit = self.cfg.copy_ratio
        return 1.0 if ratio <= limit / 2 else max(0.0, (limit - ratio) / (limit / 2))

    def _identifiers(self, _question: str, answer: str) -> float:
        named = _code_names(answer)
        if not named:
            return 1.0
        resolved = sum(
            1 for n in named if n in self.vocabulary or n.split(".")[-1] in self.vocabulary
        )
        return resolved / len(named)

    def _language(self, _question: str, answer: str) -> float:
        checks: list[float] = []
        words = [w.lower() for w in _WORD.findall(_prose(answer))]
        if len(words) >= 8:  # too little prose to tell a language from
            share = sum(w in EN_STOPWORDS for w in words) / len(words)
            checks.append(1.0 if share >= 0.1 else 0.0)
        for lang, code in _CODE_BLOCK.findall(answer):
            if lang.lower() in ("python", "py"):
                try:
                    ast.parse(code)
                    checks.append(1.0)
                except SyntaxError:
                    checks.append(0.0)
        return min(checks, default=1.0)


def _repetition(_question: str, answer: str) -> float:
    """0 for a loop (the same chunk 5+ times running, or most word 3-grams repeated)."""
    if _CHAR_LOOP.search(answer):
        return 0.0
    words = answer.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) < 10:
        return 1.0
    repeated = 1 - len(set(grams)) / len(grams)
    return 1.0 if repeated <= 0.3 else max(0.0, 1 - (repeated - 0.3) / 0.4)


def _prompt_text(record: dict[str, Any]) -> str:
    if "messages" not in record:
        return ""
    prompt, _ = formats.prompt_and_answer(record)
    return "\n".join(m["content"] for m in prompt if m["role"] != "system")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code."""
    return _INLINE_CODE.sub(" ", _CODE_BLOCK.sub(" ", text))


def _identifiers_in(text: str) -> set[str]:
    names = set(_IDENT.findall(text))
    return names | {n.split(".")[-1] for n in names}


def _code_names(answer: str) -> list[str]:
    """Names the answer presents as code: `inline` identifiers and calls like f(x)."""
    found = [
        m.rstrip("()") for m in _INLINE_CODE.findall(answer) if _IDENT.fullmatch(m.rstrip("()"))
    ]
    found += _CALL.findall(_CODE_BLOCK.sub(" ", answer))
    return list(dict.fromkeys(found))


def score_all(
    cfg: QualityConfig, records: Sequence[dict[str, Any]]
) -> tuple[list[Scored], QualityReport]:
    """Score every record; the report counts kept, dropped and the factors that cost drops."""
    scorer = Scorer(cfg, records)
    scored = [scorer.score(r) for r in records]
    report = QualityReport(threshold=cfg.threshold, weights=scorer.weights)
    by_factor: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    for s in scored:
        report.histogram[min(int(s.score * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        sums.update(s.factors)
        if s.score >= cfg.threshold:
            report.kept += 1
        else:
            report.dropped += 1
            by_factor.update(s.weakest(scorer.weights))
    active = [f for f in FACTORS if scorer.weights[f] > 0]
    report.dropped_by_factor = {f: by_factor[f] for f in active}
    report.mean_factor = {f: round(sums[f] / len(scored), 3) if scored else 0.0 for f in active}
    return scored, report
