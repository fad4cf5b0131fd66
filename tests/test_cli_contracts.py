"""What the CLI prints and exits with, as the docs say (issue 19)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlxtune.cli import app
from mlxtune.config import load_config

runner = CliRunner()


def test_error_lines_keep_square_brackets(tmp_path: Path) -> None:
    missing = tmp_path / "rows[evaluate].jsonl"  # [evaluate] is a Rich tag: it vanished
    res = runner.invoke(app, ["validate-format", str(missing)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {missing}: no such file or directory"


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is not None, reason="lm-eval installed")
def test_install_hint_prints_its_extra(tmp_path: Path) -> None:
    res = runner.invoke(app, ["evaluate", "--tasks", "hellaswag"])
    assert res.exit_code == 2
    assert "pip install 'mlx-lm[evaluate]'" in res.stderr


def test_bench_takes_the_what_list_its_reports_print(tmp_path: Path) -> None:
    cfg = load_config(None, ["bench.what=train,generate,serve"])
    assert cfg.bench.what == "all"
    assert load_config(None, ["bench.what=serve, train"]).bench.what == "train,serve"
    model = tmp_path / "build" / "bench" / "models" / "tiny"  # not built yet
    for what in ("generate", "train,generate,serve"):
        res = runner.invoke(app, ["bench", "--what", what, "--set", f"model.path={model}"])
        assert res.exit_code == 2, res.output
        assert res.stderr.strip() == (
            f"error: model.path: {model}: not found (build one: mlxtune tiny-model --out DIR)"
        )


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    res = runner.invoke(app, ["tiny-model", "--out", str(taken)])
    assert res.exit_code == 2 and "already exists and is not empty" in res.stderr
    res = runner.invoke(app, ["serve", "--adapter", "no-equals-sign"])
    assert res.exit_code == 2 and "--adapter 'no-equals-sign': expected NAME=PATH" in res.stderr
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    res = runner.invoke(app, ["bench", "--what", "generate", "--set", f"model.path={not_a_model}"])
    assert res.exit_code == 2 and f"model.path: cannot load the tokenizer of {not_a_model}" in (
        res.stderr
    )
