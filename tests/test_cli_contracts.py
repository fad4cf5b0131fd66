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
    missing = tmp_path / "rows[1].jsonl"
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
