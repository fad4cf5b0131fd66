"""Serve without restarts: POST /admin/reload under load, and A/B routes (issue 19)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import make_adapter
from mlxtune.config import Config
from mlxtune.serve.routing import pick_variant

QUESTION = [{"role": "user", "content": "What does the MLX framework do?"}]
MAX_TOKENS = 16


def test_pick_variant_is_sticky_and_weighted() -> None:
    variants = [("prod", 90.0), ("canary", 10.0)]
    picks = [pick_variant("assistant", variants, f"user-{i}") for i in range(4000)]
    assert picks == [pick_variant("assistant", variants, f"user-{i}") for i in range(4000)]
    share = picks.count("canary") / len(picks)
    assert 0.08 < share < 0.12, share
    assert {pick_variant("assistant", [("only", 1.0)], None) for _ in range(20)} == {"only"}


def test_routes_are_checked_against_served_models(tiny_model: Path, tmp_path: Path) -> None:
    from mlxtune.errors import MlxtuneError
    from mlxtune.serve.routing import check_routes

    def cfg(routes: dict[str, Any]) -> Config:
        return Config.model_validate({"serve": {"routes": routes}})

    served = ["base", "prod"]
    assert check_routes(cfg({"a": {"prod": 1, "base": 0}}), served) == {"a": [("prod", 1.0)]}
    with pytest.raises(MlxtuneError, match=r"serve.routes.a.canary: not a served model"):
        check_routes(cfg({"a": {"prod": 1, "canary": 1}}), served)
    with pytest.raises(MlxtuneError, match=r"serve.routes.prod: name clashes"):
        check_routes(cfg({"prod": {"base": 1}}), served)
    with pytest.raises(MlxtuneError, match=r"serve.routes.a: weights add up to 0"):
        check_routes(cfg({"a": {"prod": 0}}), served)


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """run-a and run-b (adapters that answer differently) in a runs dir, and a config."""
    from fake_runs import fabricate_run

    tmp = tmp_path_factory.mktemp("rollout")
    runs = tmp / "runs"
    for name, seed in (("run-a", 1), ("run-b", 2)):
        adapter = make_adapter(tiny_model, tmp / f"ad-{name}", b_scale=0.05, seed=seed)
        fabricate_run(runs, name, base_model=str(tiny_model), adapter_from=adapter)
    return {"tmp": tmp, "runs": runs, "model": tiny_model}


def _config(two_runs: dict[str, Any], serve: dict[str, Any]) -> dict[str, Any]:
    tmp = two_runs["tmp"]
    return {
        "model": {"path": str(two_runs["model"])},
        "train": {"runs_dir": str(two_runs["runs"]), "registry_dir": str(tmp / ".mx")},
        "serve": {"usage_db": str(tmp / f"usage-{len(serve)}.sqlite"), **serve},
    }


def _serve(cfg_path: Path, log: Path) -> Any:
    import sys

    from mlxtune.bench.procs import running_server
    from mlxtune.runtime import subprocess_env

    def cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "mlxtune", "serve", "-c", str(cfg_path), "--port", str(port)]

    return running_server(cmd, log, 90, env=subprocess_env())


def _stream(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[str, str]:
    """(text, model) of one streamed chat completion that must end in [DONE]."""
    text, model, done = [], "", False
    with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            model = chunk["model"]
            if chunk["choices"]:
                text.append(chunk["choices"][0].get("delta", {}).get("content") or "")
    assert done, "stream ended without [DONE]"
    return "".join(text), model


@pytest.mark.e2e
def test_reload_under_load_swaps_whole_answers(two_runs: dict[str, Any]) -> None:
    from mlxtune.io import sha256_file
    from mlxtune.runs import promote

    tmp = two_runs["tmp"]
    raw = _config(two_runs, {"adapters": {"prod": "@current"}, "max_batch_size": 4})
    cfg_path = tmp / "reload.yaml"
    cfg_path.write_text(json.dumps(raw))
    cfg = Config.model_validate(raw)
    promote(cfg, "run-a")
    body = {"model": "prod", "messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0}
    with _serve(cfg_path, tmp / "reload.log") as srv, httpx.Client(timeout=120) as client:
        old_text, _ = _stream(client, srv.url, body)
        answers: list[str] = []
        errors: list[BaseException] = []
        started = threading.Event()
        reloaded = threading.Event()

        def user() -> None:
            try:
                while True:
                    last = reloaded.is_set()
                    started.set()
                    answers.append(_stream(client, srv.url, body)[0])
                    if last:
                        return
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=user) for _ in range(8)]
        for t in threads:
            t.start()
        started.wait(30)
        promote(cfg, "run-b")
        r = client.post(srv.url + "/admin/reload")
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] == ["prod"]
        reloaded.set()
        for t in threads:
            t.join(120)
        assert not errors, errors
        new_text, _ = _stream(client, srv.url, body)
        health = client.get(srv.url + "/health").json()

    assert old_text != new_text, "the two runs must answer differently"
    counts = Counter(answers)
    assert set(counts) <= {old_text, new_text}, counts  # never a mix of the two
    assert counts[new_text] >= 8  # every client's last request came after the swap
    run_b = two_runs["runs"] / "run-b" / "adapters.safetensors"
    assert health["adapters"][0]["sha256"] == sha256_file(run_b)
    assert health["adapters"][0]["run"] == "run-b"


@pytest.mark.e2e
def test_reload_needs_the_key_or_loopback(two_runs: dict[str, Any]) -> None:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    runs = two_runs["runs"]
    open_cfg = Config.model_validate(_config(two_runs, {"adapters": {"prod": str(runs / "run-a")}}))
    with TestClient(create_app(open_cfg)) as http:  # the test client is not a loopback host
        assert http.post("/admin/reload").status_code == 403
    keyed = Config.model_validate(
        _config(two_runs, {"adapters": {"prod": str(runs / "run-a")}, "api_key": "k"})
    )
    with TestClient(create_app(keyed)) as http:
        assert http.post("/admin/reload").status_code == 401
        r = http.post("/admin/reload", headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and r.json()["reloaded"] == []  # nothing changed


@pytest.mark.e2e
def test_route_splits_by_weight_sticky_and_evaluate_sees_the_split(
    two_runs: dict[str, Any], domain_data: Path
) -> None:
    from mlxtune.evaluate import evaluate

    tmp, runs = two_runs["tmp"], two_runs["runs"]
    raw = _config(
        two_runs,
        {
            "adapters": {"prod": str(runs / "run-a"), "canary": str(runs / "run-b")},
            "routes": {"assistant": {"prod": 50, "canary": 50}},
        },
    )
    cfg_path = tmp / "routes.yaml"
    cfg_path.write_text(json.dumps(raw))
    body = {"messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0}
    with _serve(cfg_path, tmp / "routes.log") as srv, httpx.Client(timeout=120) as client:
        chat = srv.url + "/v1/chat/completions"
        direct = {
            name: client.post(chat, json={**body, "model": name}).json()["choices"][0]
            for name in ("prod", "canary")
        }
        variants = [("prod", 50.0), ("canary", 50.0)]
        users = [f"user-{i}" for i in range(6)]
        expected = {u: pick_variant("assistant", variants, u) for u in users}
        assert set(expected.values()) == {"prod", "canary"}
        for user in users:
            for _ in range(3):  # sticky: the same variant every time
                r = client.post(chat, json={**body, "model": "assistant", "user": user}).json()
                assert r["model"] == expected[user]
                assert r["choices"][0]["message"] == direct[r["model"]]["message"]
        header = {"X-Session-Id": "s-1"}
        by_header = {
            client.post(chat, json={**body, "model": "assistant"}, headers=header).json()["model"]
            for _ in range(3)
        }
        assert len(by_header) == 1
        routed = {**body, "model": "assistant", "user": users[0]}
        _, streamed_model = _stream(client, srv.url, routed)
        metrics = client.get(srv.url + "/metrics").text

        cfg = Config.model_validate(
            {
                **raw,
                "data": {"dir": str(domain_data)},
                "evaluate": {
                    "endpoint": srv.url, "endpoint_model": "assistant", "max_examples": 6,
                    "max_tokens": 4, "out_dir": str(tmp / "eval"),
                },
            }
        )  # fmt: skip
        report = evaluate(cfg).report

    assert streamed_model == expected[users[0]]
    assert 'mlxtune_route_requests_total{route="assistant",status="200",variant=' in metrics
    assert sum(report.served_by.values()) == 6 and set(report.served_by) <= {"prod", "canary"}
    with sqlite3.connect(raw["serve"]["usage_db"]) as db:
        rows = db.execute("SELECT model, route FROM requests WHERE route IS NOT NULL").fetchall()
    assert {route for _, route in rows} == {"assistant"}
    assert {model for model, _ in rows} == {"prod", "canary"}
    assert len(rows) == 6 * 3 + 3 + 1 + 6
