"""Retrieval evaluation: does a question's embedding find its answer, or its paraphrases?

For each question of a split, embed it and every candidate, rank candidates by cosine
similarity (the vectors are unit length, so a dot product), and record the rank of the best
relevant one. Two candidate sets:
- `answers`: every distinct answer; the relevant one is the question's own answer.
- `paraphrases`: every other question in the pool; relevant are those of the same `fact`
  (the shipped data asks each fact four ways). A question with no paraphrase in the pool is
  skipped and counted.
Ties count against the query (a model that maps everything to one vector scores rank n, not 1).
Scores come per side (base, adapter) and per category, in the evaluate report's block shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from mlxtune import formats
from mlxtune.errors import DataError
from mlxtune.metrics import RETRIEVAL_METRICS, retrieval_scores

if TYPE_CHECKING:
    import mlx.core as mx

    from mlxtune.embeddings import Embedder

Candidates = Literal["answers", "paraphrases"]
CANDIDATES: tuple[Candidates, ...] = ("answers", "paraphrases")
UNCATEGORIZED = "uncategorized"


@dataclass(frozen=True)
class RetrievalItem:
    id: str | None
    question: str
    answer: str
    fact: str | None
    category: str


def load_items(data_dir: Path, split: str) -> list[RetrievalItem]:
    """Question/answer items of `<data_dir>/<split>.jsonl` (chat records)."""
    path = Path(data_dir) / f"{split}.jsonl"
    items = []
    for n, row in formats.read_records(path):
        if not isinstance(row.get("messages"), list):
            raise DataError(f"{path}:{n}: messages: retrieval needs chat records")
        prompt, answer = formats.prompt_and_answer(row)
        questions = [m["content"] for m in prompt if m["role"] == "user"]
        if not questions or not answer.strip():
            raise DataError(f"{path}:{n}: messages: needs a user question and an answer")
        fact = row.get("fact")
        items.append(
            RetrievalItem(
                id=row.get("id"),
                question=questions[-1],
                answer=answer,
                fact=str(fact) if fact is not None else None,
                category=str(row.get("category") or UNCATEGORIZED),
            )
        )
    if not items:
        raise DataError(f"{path}: no records")
    return items


@dataclass
class RetrievalTask:
    """Queries, candidate texts, and per query the relevant and the excluded candidates."""

    mode: Candidates
    queries: list[RetrievalItem]
    candidates: list[str]
    relevant: list[frozenset[int]]
    excluded: list[frozenset[int]]
    skipped: int = 0


def build_task(
    queries: Sequence[RetrievalItem],
    pool: Sequence[RetrievalItem] = (),
    mode: Candidates = "answers",
) -> RetrievalTask:
    """Candidates come from the queries plus `pool` (e.g. the other splits), deduplicated."""
    everyone = [*queries, *pool]
    if mode == "answers":
        index: dict[str, int] = {}
        for item in everyone:
            index.setdefault(item.answer, len(index))
        relevant = [frozenset({index[q.answer]}) for q in queries]
        return RetrievalTask(
            mode, list(queries), list(index), relevant, [frozenset()] * len(queries)
        )
    if not any(q.fact for q in queries):
        raise DataError("retrieval paraphrases: the records have no `fact` field to group by")
    texts: dict[str, int] = {}
    facts: dict[int, str | None] = {}
    for item in everyone:
        if item.question not in texts:
            texts[item.question] = len(texts)
            facts[texts[item.question]] = item.fact
    kept, relevant, excluded = [], [], []
    for q in queries:
        own = texts[q.question]
        same = frozenset(i for i, f in facts.items() if q.fact and f == q.fact and i != own)
        if same:
            kept.append(q)
            relevant.append(same)
            excluded.append(frozenset({own}))
    return RetrievalTask(
        mode, kept, list(texts), relevant, excluded, skipped=len(queries) - len(kept)
    )


def ranks(query_vectors: mx.array, candidate_vectors: mx.array, task: RetrievalTask) -> list[int]:
    """1-based rank of each query's best relevant candidate (ties count against it)."""
    sims = cast(list[list[float]], (query_vectors @ candidate_vectors.T).tolist())
    out = []
    for row, relevant, excluded in zip(sims, task.relevant, task.excluded, strict=True):
        best = max(row[i] for i in relevant)
        ahead = sum(
            1 for i, s in enumerate(row) if s >= best and i not in relevant and i not in excluded
        )
        out.append(1 + ahead)
    return out


def rank_with(embedder: Embedder, task: RetrievalTask, *, batch_size: int = 32) -> list[int]:
    from mlxtune.embeddings import embed_texts

    queries = embed_texts(embedder, [q.question for q in task.queries], batch_size=batch_size)
    candidates = embed_texts(embedder, task.candidates, batch_size=batch_size)
    return ranks(queries, candidates, task)


def block(ranks_by_side: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """{n, base, adapter, delta} as in the evaluate report; a side not scored is None."""
    scores = {side: retrieval_scores(r) for side, r in ranks_by_side.items()}
    base, adapter = scores.get("base"), scores.get("adapter")
    delta: dict[str, float | None] | None = None
    if base and adapter:
        delta = {}
        for m in RETRIEVAL_METRICS:
            a, b = adapter[m], base[m]
            delta[m] = a - b if a is not None and b is not None else None
    n = len(next(iter(ranks_by_side.values()), []))
    return {"n": n, "base": base, "adapter": adapter, "delta": delta}


@dataclass
class RetrievalResult:
    task: RetrievalTask
    ranks: dict[str, list[int]]
    overall: dict[str, Any]
    per_category: dict[str, dict[str, Any]]
    timing: dict[str, float] = field(default_factory=dict)


def compare(
    task: RetrievalTask,
    loaders: Mapping[str, Callable[[], Embedder]],
    *,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> RetrievalResult:
    """Rank with each side's embedder in turn (loaded, used, dropped: one model in memory at
    a time), then score overall and per category."""
    if not task.queries:
        raise DataError(f"retrieval {task.mode}: no question has a relevant candidate")
    all_ranks: dict[str, list[int]] = {}
    timing: dict[str, float] = {}
    for side, load in loaders.items():
        if progress:
            progress(side)
        t0 = time.perf_counter()
        embedder = load()
        timing[f"load_{side}_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        all_ranks[side] = rank_with(embedder, task, batch_size=batch_size)
        timing[f"embed_{side}_s"] = round(time.perf_counter() - t0, 3)
        del embedder
    categories = sorted({q.category for q in task.queries})
    per_category = {}
    for c in categories:
        keep = [i for i, q in enumerate(task.queries) if q.category == c]
        per_category[c] = block({s: [r[i] for i in keep] for s, r in all_ranks.items()})
    return RetrievalResult(task, all_ranks, block(all_ranks), per_category, timing)
