"""evaluate: metrics, the gate's exit codes, the guards, the report files, --endpoint, --tasks."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_adapter
from mlxtune.cli import app
from mlxtune.config import load_config
from mlxtune.errors import ConfigError, DataError, MlxtuneError
from mlxtune.evaluate import evaluate, evaluate_tasks, load_examples, parse_threshold_flags
from mlxtune.metrics import exact_match, keyword_hit, keyword_present, token_f1

# ---------------------------------------------------------------------------------------------
# metrics and inputs (no model)


def test_keywords_are_whole_words_case_and_space_insensitive() -> None:
    assert keyword_present("Rust", "built in RUST and Go")
    assert not keyword_present("Go", "a good design")  # no substring hits
    assert keyword_present("rank 16", "LoRA with rank   16.")
    assert not keyword_present("rank 16", "rank 160")
    assert keyword_present("--show-config", "run it with --show-config first")
    assert keyword_present("0.05", "a threshold of 0.05")
    assert keyword_hit("Rust, Go and Swift", ["Rust", "Swift"]) == 1.0
    assert keyword_hit("Rust and Go", ["Rust", "Swift"]) == 0.0
    assert keyword_hit("anything", []) is None


def test_exact_match_and_token_f1_normalise() -> None:
    assert exact_match("The answer is Rust.", "answer is rust") == 1.0
    assert exact_match("Rust", "Go") == 0.0
    assert token_f1("rust go swift", "rust go swift") == 1.0
    assert token_f1("rust", "rust go") == pytest.approx(2 / 3)
    assert token_f1("", "rust") == 0.0


def test_threshold_flags_parse_and_reject() -> None:
    assert parse_threshold_flags(["keyword_accuracy=0.8", "arch/token_f1=.5"], "--min") == {
        "keyword_accuracy": 0.8,
        "arch/token_f1": 0.5,
    }
    with pytest.raises(ConfigError, match="--min 'keyword_accuracy'"):
        parse_threshold_flags(["keyword_accuracy"], "--min")
    with pytest.raises(ConfigError, match="--min 'x=high': expected METRIC=NUMBER"):
        parse_threshold_flags(["x=high"], "--min")


def test_load_examples_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"test\.jsonl: not found"):
        load_examples(tmp_path, "test")
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "test.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(DataError, match=r"test.jsonl:2: invalid JSON"):
        load_examples(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "plain"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: messages"):
        load_examples(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    [ex] = load_examples(tmp_path, "test", max_examples=1)
    assert ex.expected == "a" and ex.category == "uncategorized" and ex.keywords == []


def test_load_examples_skips_augmented_rows_unless_asked(tmp_path: Path) -> None:
    def row(question: str, **extra: str) -> str:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "a"}]
        return json.dumps({"messages": messages, **extra})

    lines = [row("q1"), row("Quick question: q1", augmented="templates"), row("q2")]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert [ex.line for ex in load_examples(tmp_path, "train")] == [1, 3]
    assert [ex.line for ex in load_examples(tmp_path, "train", augmented=True)] == [1, 2, 3]


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is not None, reason="lm-eval installed")
def test_tasks_without_lm_eval_exit_2_with_install_hint(tmp_path: Path) -> None:
    with pytest.raises(MlxtuneError, match="pip install lm-eval") as err:
        evaluate_tasks(load_config(), ["hellaswag"])
    assert err.value.exit_code == 2
    result = CliRunner().invoke(app, ["evaluate", "--tasks", "hellaswag"])
    assert result.exit_code == 2
    assert "pip install lm-eval" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# end to end on the tiny model


@pytest.fixture(scope="module")
def setup(
    tiny_model: Path, domain_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    live = make_adapter(tiny_model, root / "runs" / "live", b_scale=0.05)
    zero = make_adapter(tiny_model, root / "runs" / "zero", b_scale=0.0)
    cfg = {
        "model": {"path": str(tiny_model)},
        "data": {"dir": str(domain_data)},
        "train": {"runs_dir": str(root / "runs")},
        "evaluate": {"max_tokens": 12, "batch_size": 8, "max_examples": 10},
    }
    config = root / "eval.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return {"root": root, "live": live, "zero": zero, "config": config}


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["evaluate", *args], env=env)
    return result.exit_code, result.output


@pytest.mark.e2e
def test_working_adapter_report_and_gate_exit_codes(setup: dict[str, Path]) -> None:
    cfg = load_config(setup["config"], [f"evaluate.adapter={setup['live']}"])
    result = evaluate(cfg)
    report = json.loads(result.report_path.read_text())
    assert result.out_dir == setup["live"] / "eval"
    assert report["schema_version"] == 1 and report["n_examples"] == 10
    assert not report["adapter_equals_base"] and report["passed"]
    for side in ("base", "adapter"):
        for metric in ("keyword_accuracy", "exact_match", "token_f1", "loss", "perplexity"):
            assert report["overall"][side][metric] is not None, (side, metric)
    assert report["overall"]["adapter"]["loss"] != report["overall"]["base"]["loss"]
    assert sum(c["n"] for c in report["per_category"].values()) == 10
    assert report["timing"]["mode"] == "batched"
    rows = [json.loads(line) for line in result.predictions_path.read_text().splitlines()]
    assert len(rows) == 10
    assert {"prompt", "expected", "keywords", "category", "base", "adapter", "scores"} <= set(
        rows[0]
    )
    assert any(r["base"] != r["adapter"] for r in rows)
    # the overall figures are the means of the per-row scores, perplexity is exp(loss)
    for side in ("base", "adapter"):
        overall = report["overall"][side]
        for metric in ("keyword_accuracy", "exact_match", "token_f1"):
            values = [r["scores"][side][metric] for r in rows]
            values = [v for v in values if v is not None]
            assert values and overall[metric] == pytest.approx(sum(values) / len(values)), metric
        assert overall["loss"] > 0
        assert overall["perplexity"] == pytest.approx(math.exp(overall["loss"]), rel=1e-6)
    assert "| **overall** |" in result.markdown_path.read_text()

    adapter = f"--adapter={setup['live']}"
    code, out = _invoke("-c", str(setup["config"]), adapter, "--min", "keyword_accuracy=0")
    assert code == 0, out
    code, out = _invoke(
        "-c", str(setup["config"]), adapter, "--min", "architecture/token_f1=0.99", "--json"
    )
    assert code == 1, out
    assert "architecture/token_f1" in out
    failed = [
        t for t in json.loads(result.report_path.read_text())["thresholds"] if not t["passed"]
    ]
    assert [(t["category"], t["metric"]) for t in failed] == [("architecture", "token_f1")]


@pytest.mark.e2e
def test_zero_adapter_is_detected_and_fails_the_gate(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    code, out = _invoke(
        "-c",
        str(setup["config"]),
        f"--adapter={setup['zero']}",
        "--set",
        "evaluate.compute_loss=false",
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert code == 1, out
    assert "adapter is not doing anything" in out
    report = json.loads((setup["zero"] / "eval" / "report.json").read_text())
    assert report["adapter_equals_base"] is True and report["passed"] is False
    assert report["guards"][0]["passed"] is False
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "FAILED" in text and "WARNING" in text


@pytest.mark.e2e
def test_template_mismatch_stops_unless_allowed(setup: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(setup["live"], run, ignore=shutil.ignore_patterns("eval"))
    (run / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    args = ["-c", str(setup["config"]), f"--adapter={run}", "--max-examples=2"]
    code, out = _invoke(*args)
    assert code == 2 and "template" in out and "--allow-template-mismatch" in out
    assert not (run / "eval").exists()
    code, out = _invoke(*args, "--allow-template-mismatch", "--no-compare-base")
    assert code == 0, out
    assert "template mismatch" in out


def test_usage_errors_exit_2(setup: dict[str, Path]) -> None:
    # All of these fail before any model is loaded.
    base = ["-c", str(setup["config"]), f"--adapter={setup['live']}"]
    code, out = _invoke(*base, "--min", "nope/keyword_accuracy=0.5")
    assert code == 2 and "no category 'nope'" in out
    code, out = _invoke(*base, "--min", "accuracy=0.5")
    assert code == 2 and "unknown metric" in out
    code, out = _invoke(*base, "--no-compare-base", "--min-delta", "token_f1=0.1")
    assert code == 2 and "needs the base model" in out
    code, out = _invoke(*base, "--split", "valid", "--set", "data.dir=/nonexistent")
    assert code == 2 and "valid.jsonl: not found" in out
    code, out = _invoke("-c", str(setup["config"]), "--adapter", "/nonexistent")
    assert code == 2 and "not an adapter directory" in out


# ---------------------------------------------------------------------------------------------
# --endpoint against mlx_lm.server


@pytest.fixture
def mlx_lm_server(tiny_model: Path, tmp_path: Path) -> Iterator[str]:
    from mlxtune.bench.procs import running_server

    def cmd(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "mlx_lm.server", "--model", str(tiny_model)),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]

    with running_server(cmd, tmp_path / "mlx_lm_server.log", 60, ready_path="/v1/models") as srv:
        yield srv.url


@pytest.mark.e2e
def test_endpoint_scores_a_running_server(
    setup: dict[str, Path], mlx_lm_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        setup["config"],
        [
            f"evaluate.endpoint={mlx_lm_server}",
            f"evaluate.endpoint_model={tiny_model}",
            f"evaluate.out_dir={tmp_path}",
            "evaluate.max_examples=4",
        ],
    )
    result = evaluate(cfg)
    report = result.report
    assert report.endpoint == mlx_lm_server and report.overall.base is None
    assert report.timing.mode == "endpoint"
    assert report.overall.adapter["token_f1"] is not None
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["adapter"] for r in rows)
    f1 = [r["scores"]["adapter"]["token_f1"] for r in rows]
    assert report.overall.adapter["token_f1"] == pytest.approx(sum(f1) / len(f1))

    # The server renders the same messages with the same template, greedily: same answers as
    # the base model scored locally.
    local = load_config(
        setup["config"],
        [
            f"evaluate.adapter={setup['zero']}",
            f"evaluate.out_dir={tmp_path / 'local'}",
            "evaluate.max_examples=4",
            "evaluate.compute_loss=false",
            "evaluate.compare_base=false",
        ],
    )
    local_rows = evaluate(local).report
    assert local_rows.n_examples == 4
    local_texts = [
        json.loads(line)["adapter"]
        for line in (tmp_path / "local" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["adapter"] for r in rows] == local_texts
