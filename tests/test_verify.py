"""`mlxtune verify`: a deployment proven to serve the run, or the first difference shown."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_adapter
from mlxtune.cli import app

pytestmark = pytest.mark.e2e
runner = CliRunner()


@pytest.fixture(scope="module")
def project(
    tiny_model: Path, domain_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two runs, and mlxtune serve serving run-a as `prod` and run-b as `other`."""
    from fake_runs import fabricate_run
    from mlxtune.bench.procs import running_server
    from mlxtune.runtime import subprocess_env

    tmp = tmp_path_factory.mktemp("verify")
    runs = tmp / "runs"
    for name, seed in (("run-a", 1), ("run-b", 2)):
        adapter = make_adapter(tiny_model, tmp / f"ad-{name}", b_scale=0.05, seed=seed)
        fabricate_run(runs, name, base_model=str(tiny_model), adapter_from=adapter)
    cfg = {
        "model": {"path": str(tiny_model)},
        "data": {"dir": str(domain_data)},
        "train": {"runs_dir": str(runs), "registry_dir": str(tmp / ".mx")},
        "evaluate": {"max_tokens": 8},
        "serve": {"adapters": {"prod": "run-a", "other": "run-b"}},
    }
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    def cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "mlxtune", "serve", "-c", str(cfg_path), "--port", str(port)]

    with running_server(cmd, tmp / "serve.log", 90, env=subprocess_env()) as srv:
        yield {"config": str(cfg_path), "url": srv.url, "tmp": tmp}


def verify(project: dict[str, Any], *args: str) -> Any:
    return runner.invoke(app, ["verify", *args, "-n", "3", "-c", project["config"]])


def test_verify_passes_when_the_server_serves_the_run(project: dict[str, Any]) -> None:
    res = verify(project, "run-a", "--endpoint", project["url"], "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["model"] == "prod" and out["health"] == "ok"  # found by its sha256
    assert out["compared"] == out["equal"] == 3


def test_verify_fails_with_a_diff_when_another_adapter_answers(project: dict[str, Any]) -> None:
    res = verify(project, "run-a", "--endpoint", project["url"], "--model", "other")
    assert res.exit_code == 1, res.output
    assert "'other' serves sha256" in res.output and "not the run's" in res.output
    assert "first mismatch, question 1" in res.output and "--- run" in res.output


def test_verify_usage_errors_exit_2(project: dict[str, Any]) -> None:
    assert verify(project, "run-a").exit_code == 2  # no --endpoint
    res = verify(project, "run-x", "--endpoint", project["url"])
    assert res.exit_code == 2 and "did you mean run-" in res.output
    res = verify(project, "run-a", "--endpoint", "http://127.0.0.1:9")
    assert res.exit_code == 2 and "ConnectError" in res.output


def test_verify_shows_mlx_lm_server_serving_the_base(
    project: dict[str, Any], tiny_model: Path
) -> None:
    from mlxtune.bench.procs import running_server

    def cmd(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "mlx_lm.server", "--model", str(tiny_model)),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]

    log = project["tmp"] / "mlx_lm_server.log"
    with running_server(cmd, log, 60, ready_path="/v1/models") as srv:
        res = verify(project, "run-a", "--endpoint", srv.url, "--model", str(tiny_model))
    assert res.exit_code == 1, res.output
    assert "skipped" in res.output  # mlx_lm.server's /health lists no adapters
    assert "answers as the base model: the adapter is not applied" in res.output
