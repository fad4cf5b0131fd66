"""serve without a model: the CLI's flags reach the config, adapter resolution refuses bad
entries with one line, and the usage log writes rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlxtune.cli import app
from mlxtune.config import Config
from mlxtune.errors import MlxtuneError
from mlxtune.serve import ServeResult, UsageLog, resolve_adapters, usage_db_path


def fake_adapter(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapters.safetensors").write_bytes(b"")
    return path


def test_cli_flags_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(cfg: Config, on_ready: Any = None) -> ServeResult:
        seen["cfg"] = cfg
        return ServeResult(url="http://127.0.0.1:1", models=[], requests=0)

    monkeypatch.setattr("mlxtune.serve.serve", fake_serve)
    result = CliRunner().invoke(
        app,
        ["serve", "--set", "serve.max_queue=3", "--port", "9001", "--adapter", "a=runs/x",
         "--adapter", "b=runs/y", "--api-key", "k"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.serve.port == 9001 and cfg.serve.max_queue == 3 and cfg.serve.api_key == "k"
    assert cfg.serve.host == "127.0.0.1"
    assert {k: str(v) for k, v in cfg.serve.adapters.items()} == {"a": "runs/x", "b": "runs/y"}

    bad = CliRunner().invoke(app, ["serve", "--adapter", "no-equals-sign"])
    assert bad.exit_code == 1 and "NAME=PATH" in bad.output


def test_resolve_adapters(tmp_path: Path) -> None:
    good = fake_adapter(tmp_path / "runs" / "good")
    cfg = Config.model_validate(
        {"train": {"runs_dir": str(tmp_path / "runs")}, "serve": {"adapters": {"g": "good"}}}
    )
    assert resolve_adapters(cfg) == {"g": good}  # a run name under train.runs_dir
    assert usage_db_path(cfg, {"g": good}) == good / "usage.sqlite"
    for adapters, needle in (
        ({"x": str(tmp_path / "missing")}, "serve.adapters.x: "),
        ({"base": str(good)}, "clashes with serve.base_name"),
        ({"y": str(tmp_path)}, "serve.adapters.y: .* not a run or adapter directory"),
    ):
        cfg = Config.model_validate({"serve": {"adapters": adapters}})
        with pytest.raises(MlxtuneError, match=needle):
            resolve_adapters(cfg)


def test_usage_log_rows(tmp_path: Path) -> None:
    log = UsageLog(tmp_path / "u" / "usage.sqlite")
    log.log(endpoint="chat", model="a", prompt_tokens=3, completion_tokens=5, status=200)
    log.close()
    with sqlite3.connect(tmp_path / "u" / "usage.sqlite") as db:
        rows = db.execute(
            "SELECT model, prompt_tokens, completion_tokens, status, time FROM requests"
        )
        (row,) = rows.fetchall()
    assert row[:4] == ("a", 3, 5, 200) and row[4].endswith("Z")
