"""`prepare.augment`: more phrasings of each training question, never across splits.

Augmentation runs after the split, on the splits in `augment.splits` only (train by default),
so a new row always lands in its original's split and group, and evaluation data stays as
written. Each new row copies its original, replaces the last user turn, and is tagged
`augmented: <method>`. A new question equal (after normalisation) to any existing question in
any split is dropped and counted: a rephrasing must never duplicate a held-out question.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlxtune.data import records as rec
from mlxtune.data.quality import EN_STOPWORDS

if TYPE_CHECKING:
    from mlxtune.config import AugmentConfig, ModelConfig

Paraphraser = Callable[[list[str], int], list[list[str]]]  # (questions, n) -> n per question


@dataclass
class AugmentReport:
    method: str
    factor: int
    splits: list[str]
    originals: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    empty_dropped: int = 0
    too_long_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "factor": self.factor,
            "splits": self.splits,
            "originals": self.originals,
            "added": self.added,
            "duplicates_dropped": self.duplicates_dropped,
            "empty_dropped": self.empty_dropped,
            "too_long_dropped": self.too_long_dropped,
        }


def topic(question: str) -> str:
    """The question without its final mark and capital: 'What is X?' -> 'what is X'."""
    text = question.strip().rstrip("?.!").strip()
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return text


# Function words dropped from {words}: the question's content is what a paraphrase keeps.
_QUESTION_WORDS = EN_STOPWORDS | frozenset(
    "who whom whose where why which should would could i me my we our there name tell describe "  # noqa: SIM905
    "explain list give kind".split()
)
_TOKEN = re.compile(r"[\w][\w.+#/-]*[\w+#]|\w")


def content_words(question: str) -> list[str]:
    """The question's words without function words, in order: 'Which port does the LLM
    Router use?' -> ['port', 'LLM', 'Router', 'use']."""
    return [w for w in _TOKEN.findall(question) if w.lower() not in _QUESTION_WORDS]


PLACEHOLDERS = ("question", "topic", "words", "words_a", "words_b")


def placeholders(question: str) -> dict[str, str]:
    """What a template may name: {question}, {topic}, {words} (content words), {words_a} and
    {words_b} (every other content word, starting with the first and the second)."""
    words = content_words(question)
    return {
        "question": question.strip(),
        "topic": topic(question),
        "words": " ".join(words),
        "words_a": " ".join(words[0::2]),
        "words_b": " ".join(words[1::2]),
    }


def fill(template: str, question: str) -> str:
    """The template with its placeholders filled; unknown braces are left as written."""
    values = placeholders(question)
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _stable(text: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}\x1f{text}".encode()).hexdigest()[:8], 16)


def template_paraphrases(cfg: AugmentConfig) -> Paraphraser:
    """n deterministic rephrasings per question from cfg.templates, in an order fixed by the
    question and seed, so neighbouring questions use different templates."""

    def paraphrase(questions: list[str], n: int) -> list[list[str]]:
        out = []
        for q in questions:
            start = _stable(q, cfg.seed) % len(cfg.templates)
            chosen: list[str] = []
            for k in range(len(cfg.templates)):
                if len(chosen) == n:
                    break
                t = cfg.templates[(start + k) % len(cfg.templates)]
                chosen.append(fill(t, q))
            out.append(chosen)
        return out

    return paraphrase


def model_paraphrases(cfg: AugmentConfig, model_cfg: ModelConfig) -> Paraphraser:
    """n paraphrases per question generated greedily by a model, batched; the k-th paraphrase
    of a question asks again with the (k-1)-th answer as the question, so greedy decoding
    still gives n different phrasings."""

    def paraphrase(questions: list[str], n: int) -> list[list[str]]:
        from mlxtune import formats
        from mlxtune.evaluate import _generate
        from mlxtune.modeling import load_model

        if cfg.model_path:
            model_cfg_used = model_cfg.model_copy(update={"path": cfg.model_path})
        else:
            model_cfg_used = model_cfg
        model, tokenizer, _ = load_model(model_cfg_used)
        current = [q.strip() for q in questions]
        out: list[list[str]] = [[] for _ in questions]
        for _ in range(n):
            prompts = [
                formats.encode_prompt(
                    tokenizer, [{"role": "user", "content": cfg.prompt.replace("{question}", q)}]
                )
                for q in current
            ]
            texts, _tokens = _generate(
                model, tokenizer, prompts, cfg.max_tokens, cfg.batch_size, lambda _done: None
            )
            for i, text in enumerate(texts):
                line = _first_line(text)
                out[i].append(line)
                current[i] = line or current[i]
        return out

    return paraphrase


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def augment(
    split_records: dict[str, list[dict[str, Any]]],
    cfg: AugmentConfig,
    paraphrase: Paraphraser,
) -> tuple[dict[str, list[dict[str, Any]]], AugmentReport]:
    """Each split in cfg.splits gets up to factor - 1 new rows per original chat record,
    placed right after it."""
    report = AugmentReport(method=cfg.method, factor=cfg.factor, splits=list(cfg.splits))
    seen = {rec.question_key(r) for rows in split_records.values() for r in rows}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, rows in split_records.items():
        if split not in cfg.splits or cfg.factor == 1:
            out[split] = list(rows)
            continue
        chat = [r for r in rows if "messages" in r and _user_index(r) is not None]
        report.originals[split] = len(chat)
        variants = paraphrase([_question(r)[0] for r in chat], cfg.factor - 1)
        extra: dict[int, list[dict[str, Any]]] = {}
        for original, texts in zip(chat, variants, strict=True):
            for k, text in enumerate(texts, 1):
                text = rec.clean_text(text)
                if not text:
                    report.empty_dropped += 1
                    continue
                new = _with_question(original, text, cfg.method, k)
                key = rec.question_key(new)
                if key in seen:
                    report.duplicates_dropped += 1
                    continue
                seen.add(key)
                extra.setdefault(id(original), []).append(new)
        merged: list[dict[str, Any]] = []
        for r in rows:
            merged.append(r)
            merged.extend(extra.get(id(r), []))
        report.added[split] = len(merged) - len(rows)
        out[split] = merged
    return out, report


def _user_index(record: dict[str, Any]) -> int | None:
    messages: Sequence[dict[str, str]] = record["messages"]
    return next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None
    )


def _question(record: dict[str, Any]) -> tuple[str, str]:
    """(the question: the last user turn's first paragraph, the rest of that turn). An alpaca
    `input` (code, a signature) follows the instruction after a blank line and is kept as is."""
    content = record["messages"][_user_index(record) or 0]["content"]
    head, sep, rest = content.partition("\n\n")
    return head, sep + rest


def _with_question(original: dict[str, Any], question: str, method: str, k: int) -> dict[str, Any]:
    new = dict(original)
    messages = [dict(m) for m in original["messages"]]
    messages[_user_index(original) or 0]["content"] = question + _question(original)[1]
    new["messages"] = messages
    if "id" in new:
        new["id"] = f"{new['id']}~{method}{k}"
    new["augmented"] = method
    return new
