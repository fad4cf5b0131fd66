"""`mlxtune status`: one read-only screen over device, data, runs, aliases, server and graph."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from fake_runs import fabricate_run
from mlxtune.bench.procs import free_port
from mlxtune.cli import app
from mlxtune.config import load_config
from mlxtune.data.prepare import prepare
from mlxtune.runs import promote

runner = CliRunner()
DOMAIN = Path(__file__).resolve().parents[1] / "data" / "domain" / "universal_ai_tools.jsonl"


def project(tmp_path: Path, **extra: Any) -> Path:
    tree: dict[str, Any] = {
        "data": {"dir": str(tmp_path / "prepared")},
        "train": {"runs_dir": str(tmp_path / "runs"), "registry_dir": str(tmp_path / ".mx")},
        "serve": {"port": free_port()},  # nothing listens there
    }
    for section, values in extra.items():
        tree.setdefault(section, {}).update(values)
    path = tmp_path / "mlxtune.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def files_under(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")}


def status_json(config: Path) -> dict[str, Any]:
    res = runner.invoke(app, ["status", "-c", str(config), "--json"])
    assert res.exit_code == 0, res.output
    return dict(json.loads(res.output))


def test_status_with_nothing_there(tmp_path: Path):
    config = project(tmp_path)
    before = files_under(tmp_path)
    res = runner.invoke(app, ["status", "-c", str(config)])
    assert res.exit_code == 0, res.output
    for line in ("not prepared (mlxtune prepare)", "none yet (mlxtune train)", "none on http"):
        assert line in res.output
    data = status_json(config)
    assert data["data"]["prepared"] is False and data["runs"]["count"] == 0
    assert data["server"]["state"] == "down" and data["graphs"] == []
    assert files_under(tmp_path) == before  # read only: no registry, no data dir


def test_status_counts_prepared_data_runs_and_aliases(tiny_model: Path, tmp_path: Path):
    config = project(
        tmp_path,
        model={"path": str(tiny_model)},
        prepare={"sources": [{"path": str(DOMAIN)}], "test_ratio": 0.15},
    )
    cfg = load_config(config)
    prepared = prepare(cfg)
    runs = tmp_path / "runs"
    fabricate_run(runs, "older-better", final_loss=0.8, started_at="2026-11-20T10:00:00Z")
    fabricate_run(runs, "newer", final_loss=1.5, accuracy=0.7, started_at="2026-11-21T10:00:00Z")
    fabricate_run(runs, "failed", final_loss=0.9, status="failed", with_eval=False,
                  started_at="2026-11-19T10:00:00Z")  # fmt: skip
    promote(cfg, "newer")
    before = files_under(tmp_path)

    data = status_json(config)
    assert data["data"]["splits"] == prepared.splits
    assert data["data"]["read"] == prepared.read == 308
    assert data["data"]["source_kinds"] == data["source_kinds"] == ["jsonl"]
    assert data["data"]["age_s"] is not None and data["data"]["age_s"] < 600
    assert data["runs"]["count"] == 3
    assert data["runs"]["latest"]["name"] == "newer"
    assert data["runs"]["latest"]["aliases"] == ["current"]
    assert data["runs"]["latest"]["keyword_accuracy"] == 0.7
    assert data["runs"]["best"]["name"] == "older-better"  # lowest validation loss
    assert data["runs"]["aliases"] == {"current": "newer"}
    assert files_under(tmp_path) == before  # the registry is read, not synced or touched

    res = runner.invoke(app, ["status", "-c", str(config)])
    assert res.exit_code == 0, res.output
    assert "train 231" in res.output and "@current -> newer" in res.output


class _Health(BaseHTTPRequestHandler):
    body: ClassVar[dict[str, Any]] = {}
    code = 200
    key = ""

    def do_GET(self) -> None:
        body = self.body
        if self.key and self.headers.get("Authorization") != f"Bearer {self.key}":
            body = {"status": body.get("status")}  # as serve: details only with the key
        payload = json.dumps(body).encode()
        self.send_response(self.code if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    """A stand-in answering /health on loopback (the network is the boundary here)."""
    handler = type("Handler", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_status_reports_a_running_server(tmp_path: Path, health_server):
    port, handler = health_server
    handler.body = {
        "status": "ok",
        "default_model": "demo",
        "adapters": [{"name": "demo", "path": "runs/demo"}],
        "uptime_s": 125.0,
        "queue_depth": 0,
    }
    config = project(tmp_path, serve={"port": port})
    server = status_json(config)["server"]
    assert server["state"] == "up" and server["detail"]["adapters"] == ["demo"]
    res = runner.invoke(app, ["status", "-c", str(config)])
    assert "up http://127.0.0.1:" in res.output and "demo" in res.output

    handler.key = "sekret"  # details need the key: status sends serve.api_key
    assert "adapters" not in status_json(config)["server"]["detail"]
    res = runner.invoke(app, ["status", "-c", str(config), "--set", "serve.api_key=sekret"])
    assert "demo" in res.output and "details need" not in res.output

    handler.key = ""
    handler.code, handler.body = 503, {"status": "error", "error": "worker died"}
    server = status_json(config)["server"]
    assert server["state"] == "unhealthy" and server["detail"]["error"] == "worker died"
