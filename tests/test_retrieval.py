"""Retrieval metrics (pure) and the retrieval evaluation core on the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_adapter
from mlxtune.config import load_config
from mlxtune.embeddings import load_embedder
from mlxtune.errors import DataError
from mlxtune.metrics import mean_reciprocal_rank, recall_at_k, retrieval_scores
from mlxtune.retrieval import RetrievalItem, build_task, compare, load_items, ranks


def item(i: int, fact: str, category: str = "c", answer: str | None = None) -> RetrievalItem:
    return RetrievalItem(f"q{i}", f"question {i}", answer or f"answer of {fact}", fact, category)


def test_recall_and_mrr() -> None:
    assert recall_at_k([1, 2, 6, 1], 1) == 0.5
    assert recall_at_k([1, 2, 6, 1], 5) == 0.75
    assert mean_reciprocal_rank([1, 2, 4]) == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert retrieval_scores([]) == {"recall_at_1": None, "recall_at_5": None, "mrr": None}


def test_answers_task_dedupes_answers_shared_by_paraphrases() -> None:
    queries = [item(0, "f1"), item(1, "f2")]
    pool = [item(2, "f1"), item(3, "f3")]
    task = build_task(queries, pool, "answers")
    assert task.candidates == ["answer of f1", "answer of f2", "answer of f3"]
    assert task.relevant == [frozenset({0}), frozenset({1})]


def test_paraphrase_task_excludes_the_question_itself_and_skips_loners() -> None:
    queries = [item(0, "f1"), item(1, "f2")]
    pool = [item(0, "f1"), item(2, "f1"), item(3, "f1"), item(4, "f3")]
    task = build_task(queries, pool, "paraphrases")
    assert [q.id for q in task.queries] == ["q0"]  # f2 has no paraphrase in the pool
    assert task.skipped == 1
    assert task.candidates[0] == "question 0"
    assert task.relevant == [frozenset({2, 3})]  # q2, q3; not q0 itself
    assert task.excluded == [frozenset({0})]
    with pytest.raises(DataError, match="no `fact` field"):
        build_task([RetrievalItem(None, "q", "a", None, "c")], (), "paraphrases")


def test_ranks_take_the_best_relevant_and_count_ties_against_the_query() -> None:
    import mlx.core as mx

    candidates = mx.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])
    queries = mx.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    task = build_task([item(0, "a"), item(1, "b"), item(2, "c")], (), "answers")
    task.candidates = ["c0", "c1", "c2", "c3"]
    task.relevant = [frozenset({2}), frozenset({2}), frozenset({1, 0})]
    # q0: c1 (1.0) beats c2/c3 (0.8); c3 ties c2 -> rank 3. q1: c3 ties -> 2. q2: c0 best -> 1.
    assert ranks(queries, candidates, task) == [3, 2, 1]
    task.excluded = [frozenset({1}), frozenset(), frozenset()]
    assert ranks(queries, candidates, task)[0] == 2


@pytest.mark.e2e
def test_base_vs_adapter_per_category(tiny_model: Path, domain_data: Path, tmp_path: Path) -> None:
    cfg = load_config(flags={"model.path": str(tiny_model)})
    adapter = make_adapter(tiny_model, tmp_path / "adapter", b_scale=0.05)
    queries = load_items(domain_data, "test")
    pool = load_items(domain_data, "train")
    for mode in ("answers", "paraphrases"):
        task = build_task(queries, pool, mode)  # type: ignore[arg-type]
        assert task.skipped == 0 and len(task.queries) == 77
        result = compare(
            task,
            {"base": lambda: load_embedder(cfg), "adapter": lambda: load_embedder(cfg, adapter)},
        )
        overall = result.overall
        assert overall["n"] == 77
        assert sum(b["n"] for b in result.per_category.values()) == 77
        assert len(result.per_category) == 9
        for side in ("base", "adapter"):
            s = overall[side]
            assert 0 <= s["recall_at_1"] <= s["recall_at_5"] <= 1
            assert s["recall_at_1"] <= s["mrr"] <= 1
        assert result.ranks["base"] != result.ranks["adapter"]  # the adapter moves the vectors
        assert overall["delta"]["mrr"] == pytest.approx(
            overall["adapter"]["mrr"] - overall["base"]["mrr"]
        )
        n_candidates = len(task.candidates)
        assert all(1 <= r <= n_candidates for r in result.ranks["base"])


@pytest.mark.e2e
def test_dedicated_model_scores_answers(tiny_bert: Path, domain_data: Path) -> None:
    cfg = load_config(flags={"embed.kind": "dedicated", "embed.model": str(tiny_bert)})
    task = build_task(load_items(domain_data, "test"), load_items(domain_data, "train"), "answers")
    result = compare(task, {"base": lambda: load_embedder(cfg)})
    assert result.overall["adapter"] is None and result.overall["delta"] is None
    # random weights, but shared WordPiece tokens between question and answer: above chance
    assert result.overall["base"]["recall_at_5"] > 5 / len(task.candidates)


@pytest.mark.e2e
def test_evaluate_task_retrieval_cli_gate_and_exit_codes(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from mlxtune.cli import app

    adapter = make_adapter(tiny_model, tmp_path / "runs" / "live", b_scale=0.05)
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model)},
                "data": {"dir": str(domain_data)},
                "train": {"runs_dir": str(tmp_path / "runs")},
            }
        )
    )
    args = ["evaluate", "-c", str(config), "--task", "retrieval", "--adapter", str(adapter)]
    result = CliRunner().invoke(app, [*args, "--min", "recall_at_5=0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((adapter / "eval" / "report.json").read_text())
    assert report["n_examples"] == 77 and report["passed"]
    assert set(report["overall"]["adapter"]) == {"recall_at_1", "recall_at_5", "mrr"}
    assert report["overall"]["delta"]["mrr"] == pytest.approx(
        report["overall"]["adapter"]["mrr"] - report["overall"]["base"]["mrr"]
    )
    assert "(308 candidates)" not in report["timing"]["mode"]  # answers: 77 distinct
    rows = (adapter / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 77 and json.loads(rows[0])["relevant"]
    result = CliRunner().invoke(
        app, [*args, "--candidates", "paraphrases", "--min", "architecture/mrr=1.01"]
    )
    assert result.exit_code == 1, result.output  # the gate failed
    result = CliRunner().invoke(app, [*args, "--min", "keyword_accuracy=0.5"])
    assert result.exit_code == 2 and "unknown metric" in result.output
