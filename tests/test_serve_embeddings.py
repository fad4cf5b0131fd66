"""`POST /v1/embeddings` end to end: the official openai client against a served base model,
a served adapter and the tiny BERT (in process), and overload bursts against real servers."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from conftest import make_adapter
from mlxtune.config import Config
from mlxtune.errors import MlxtuneError

pytestmark = pytest.mark.e2e

API_KEY = "embed-key"
TEXTS = ["Which port does the Rust LLM Router use?", "hi", "LoRA rank and scale"]


def embed_config(model_dir: Path, adapter: Path, usage_db: Path, **embed: Any) -> dict[str, Any]:
    return {
        "model": {"path": str(model_dir)},
        "serve": {
            "adapters": {"ad1": str(adapter)},
            "api_key": API_KEY,
            "max_queue": 2,
            "usage_db": str(usage_db),
        },
        "embed": {"max_inputs": 4, "max_tokens_per_input": 64, "batch_size": 8, **embed},
    }


@dataclass
class App:
    http: Any
    cfg: Config
    usage_db: Path

    def client(self) -> Any:
        import openai

        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=API_KEY, http_client=self.http, max_retries=0
        )


@pytest.fixture(scope="module")
def served(
    tiny_model: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[App]:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    tmp = tmp_path_factory.mktemp("serve-embed")
    adapter = make_adapter(tiny_model, tmp / "runs" / "ad1", b_scale=0.05)
    usage_db = tmp / "usage.sqlite"
    raw = embed_config(tiny_model, adapter, usage_db, kind="dedicated", model=str(tiny_bert))
    cfg = Config.model_validate(raw)
    with TestClient(create_app(cfg)) as http:
        yield App(http, cfg, usage_db)


def _vectors(resp: Any) -> list[list[float]]:
    return [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True))


def test_openai_client_gets_embeddings_from_base_adapter_and_bert(served: App) -> None:
    client = served.client()
    models = {m.id for m in client.models.list().data}
    assert {"base", "ad1", "bert"} <= models
    got = {}
    for name, size in (("base", 256), ("ad1", 256), ("bert", 128)):
        # the client's default asks for base64 and decodes it; float is asked explicitly
        b64 = client.embeddings.create(model=name, input=TEXTS)
        floats = client.embeddings.create(model=name, input=TEXTS, encoding_format="float")
        assert b64.model == name and len(b64.data) == 3
        assert all(len(v) == size for v in _vectors(floats))
        assert _max_diff(_vectors(b64), _vectors(floats)) < 1e-6
        assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in _vectors(floats))
        assert b64.usage.prompt_tokens == floats.usage.prompt_tokens > 3
        got[name] = _vectors(floats)
    assert _max_diff(got["base"], got["ad1"]) > 1e-3  # the adapter gives its own vectors


def test_served_vectors_equal_the_library_and_batching(served: App) -> None:
    from mlxtune.embeddings import embed_texts, load_embedder

    client = served.client()
    pooled = Config.model_validate({"model": served.cfg.model.model_dump()})
    direct = embed_texts(load_embedder(pooled), TEXTS).tolist()
    together = _vectors(
        client.embeddings.create(model="base", input=TEXTS, encoding_format="float")
    )
    one_by_one = [
        _vectors(client.embeddings.create(model="base", input=t, encoding_format="float"))[0]
        for t in TEXTS
    ]
    assert _max_diff(together, direct) < 1e-5
    assert _max_diff(together, one_by_one) < 1e-5
    ids = client.embeddings.create(model="base", input=TEXTS[0], encoding_format="float")
    tokens = served.http.app.state.serve.embed.embedders["base"].tokenize(TEXTS[0])
    by_ids = client.embeddings.create(model="base", input=[tokens], encoding_format="float")
    assert ids.usage.prompt_tokens == len(tokens)
    assert _max_diff(_vectors(ids), _vectors(by_ids)) < 1e-6


def test_bad_requests_are_400_naming_the_limit(served: App) -> None:
    import openai

    client = served.client()
    cases = [
        ({"input": ["a"] * 5}, "embed.max_inputs"),
        ({"input": " ".join(["gateway"] * 80)}, "embed.max_tokens_per_input"),
        ({"input": "hi", "dimensions": 64}, "dimensions: 64 is not supported"),
        ({"input": [[1, 999999]]}, "outside the vocabulary"),
        ({"input": ""}, "empty input"),
    ]
    for kwargs, message in cases:
        with pytest.raises(openai.BadRequestError, match=message):
            client.embeddings.create(model="base", **kwargs)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.embeddings.create(model="nope", input="hi")
    r = served.http.post("/v1/embeddings", json={"input": "hi"})
    assert r.status_code == 401
    r = served.http.post("/v1/embeddings", content=b"{not json")  # the key comes before the body
    assert r.status_code == 401
    auth = {"Authorization": f"Bearer {API_KEY}"}
    strict = [
        b'{"model": "base", "input": "hi", "dimensions": "256"}',
        b'{"input": [[1, 2.0]]}',
        b'{"input": "\\ud800"}',
    ]
    for raw in strict:
        r = served.http.post("/v1/embeddings", content=raw, headers=auth)
        assert r.status_code == 400, raw
    r = served.http.post("/v1/embeddings", json={"input": "hi", "truncate": True}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate"  # never ignored
    r = served.http.post("/v1/embeddings", json={"input": "x" * (16 * 64 + 1)}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "embed.max_tokens_per_input"
    r = served.http.post(
        "/v1/embeddings", json={"input": {"x": 1}}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("input")


def test_usage_log_metrics_and_health_cover_embeddings(served: App) -> None:
    client = served.client()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    client.embeddings.create(model="bert", input=TEXTS[:2])
    refused = served.http.post("/v1/embeddings", json={"model": "bert", "input": ""}, headers=auth)
    assert refused.status_code == 400
    served.http.app.state.serve.usage.flush()
    with sqlite3.connect(served.usage_db) as db:
        rows = db.execute(
            "SELECT endpoint, model, status, prompt_tokens FROM requests "
            "WHERE endpoint = 'embeddings' ORDER BY id DESC LIMIT 1"
        ).fetchall()
    # the last stored row is the served one: the refusal is counted, not stored
    assert rows[0][:3] == ("embeddings", "bert", 200) and rows[0][3] > 0
    metrics = served.http.get("/metrics", headers=auth).text
    assert 'mlxtune_requests_total{model="bert",status="200"}' in metrics
    assert 'mlxtune_requests_total{model="bert",status="400"}' in metrics
    assert "mlxtune_embed_batch_inputs_count" in metrics
    assert "mlxtune_embed_queue_depth" in metrics
    assert "embeddings" not in served.http.get("/health").json()  # details need the key
    health = served.http.get("/health", headers=auth).json()
    assert health["embeddings"]["ok"] and "bert" in health["embeddings"]["models"]
    assert health["embeddings"]["dedicated"] == ["bert"]


def test_dedicated_model_without_the_extra_fails_at_start(
    served: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxtune.serve import create_app

    monkeypatch.setitem(sys.modules, "mlx_embeddings", None)  # as if not installed
    with pytest.raises(MlxtuneError, match=r"pip install 'mlxtune\[embed\]'"):
        create_app(served.cfg, models=served.http.app.state.serve.models)


def test_reload_after_promote_changes_an_alias_adapters_embeddings(
    tiny_model: Path, tmp_path: Path
) -> None:
    """`runs promote` + POST /admin/reload: /v1/embeddings for an @alias adapter pools the
    newly promoted run's hidden states (as the library does for that run), the base's do not
    move."""
    from starlette.testclient import TestClient

    from fake_runs import fabricate_run
    from mlxtune.embeddings import embed_texts, load_embedder
    from mlxtune.runs import promote
    from mlxtune.serve import create_app

    runs = tmp_path / "runs"
    for name, seed in (("run-a", 1), ("run-b", 2)):
        adapter = make_adapter(tiny_model, tmp_path / f"ad-{name}", b_scale=0.05, seed=seed)
        fabricate_run(runs, name, base_model=str(tiny_model), adapter_from=adapter)
    cfg = Config.model_validate(
        {
            "model": {"path": str(tiny_model)},
            "train": {"runs_dir": str(runs), "registry_dir": str(tmp_path / ".mx")},
            "serve": {"adapters": {"prod": "@current"}, "api_key": API_KEY,
                      "usage_db": str(tmp_path / "usage.sqlite")},
        }
    )  # fmt: skip
    library = {
        run: embed_texts(load_embedder(cfg, runs / run), TEXTS).tolist()
        for run in ("run-a", "run-b")
    }
    assert _max_diff(library["run-a"], library["run-b"]) > 1e-3  # the runs embed differently
    promote(cfg, "run-a")
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def served(http: Any, model: str) -> list[list[float]]:
        body = {"model": model, "input": TEXTS, "encoding_format": "float"}
        r = http.post("/v1/embeddings", json=body, headers=auth)
        assert r.status_code == 200, r.text
        return [d["embedding"] for d in r.json()["data"]]

    with TestClient(create_app(cfg)) as http:
        before, base_before = served(http, "prod"), served(http, "base")
        promote(cfg, "run-b")
        r = http.post("/admin/reload", headers=auth)
        assert r.status_code == 200 and r.json()["reloaded"] == ["prod"], r.text
        after, base_after = served(http, "prod"), served(http, "base")
    assert _max_diff(before, library["run-a"]) < 1e-5
    assert _max_diff(after, library["run-b"]) < 1e-5
    assert _max_diff(base_before, base_after) < 1e-6


# ---------------------------------------------------------------------------------------------
# Overload: a burst of 32 against a real server with a small queue


class Answer(NamedTuple):
    status: int
    seconds: float  # the client's: request written to response headers read
    retry_after: str | None
    server_ms: float | None  # a refusal's own timing (Server-Timing: refusal;dur=MS)


def _burst(url: str, n: int = 32) -> list[Answer]:
    """`n` embeddings requests at once over raw sockets (opened first, requests pre-built, so
    the client costs next to nothing and a timing is the server's)."""
    import asyncio

    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "base", "input": [" ".join(["gateway router"] * 10)] * 4})
    request = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        took = time.perf_counter() - t0
        writer.close()
        lines = head.decode().split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        timing = re.fullmatch(r"refusal;dur=([0-9.]+)", fields.get("server-timing", ""))
        server_ms = float(timing.group(1)) if timing else None
        return Answer(int(lines[0].split()[1]), took, fields.get("retry-after"), server_ms)

    async def run() -> list[Answer]:
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(n)]
        return list(await asyncio.gather(*(one(r, w) for r, w in conns)))

    return asyncio.run(run())


@pytest.mark.parametrize("fail_fast", [False, True])
def test_burst_gives_only_200_or_fast_503(
    tiny_model: Path, tmp_path: Path, fail_fast: bool
) -> None:
    """The issue's criterion: 32 at once against a queue of 2, only 200 and 503 + Retry-After,
    no 503 waiting behind a forward pass, the server up after; each refusal reports the
    server's own time (headers received to refusal sent) in Server-Timing and /metrics."""
    from test_serve import start_server

    adapter = make_adapter(tiny_model, tmp_path / "runs" / "ad1", b_scale=0.05)
    cfg_path = tmp_path / "serve.yaml"
    raw = embed_config(tiny_model, adapter, tmp_path / "usage.sqlite", fail_fast=fail_fast)
    cfg_path.write_text(json.dumps(raw))
    proc, url = start_server(cfg_path, tmp_path / "server.log")
    try:
        warm = _burst(url)  # a process's first requests pay one-off costs (imports, code paths)
        results = _burst(url)
        assert len(results) == 32
        statuses = sorted({r.status for r in results})
        assert set(statuses) <= {200, 503}, results
        refused = [r for r in results if r.status == 503]
        assert refused and any(r.status == 200 for r in results), statuses
        assert all(r.retry_after is not None and int(r.retry_after) > 0 for r in refused)
        assert all(r.server_ms is not None and r.server_ms < r.seconds * 1e3 for r in refused)
        timings = sorted((r.status, round(r.seconds * 1e3), r.server_ms) for r in results)
        slowest_refusal = max(r.seconds for r in refused)
        # A refusal never waits for a forward pass (or the tokenizer) to finish ...
        assert slowest_refusal < max(r.seconds for r in results if r.status == 200), timings
        # How fast (the 50 ms) is a speed figure: `bench --what embed` measures it
        # (its "burst 32, queue 2" row, beside the target), not a timed test.
        assert proc.poll() is None
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            assert http.get("/health").status_code == 200
            assert http.post("/v1/embeddings", json={"input": "hi"}).status_code == 200
            metrics = http.get("/metrics").text
        n_refused = sum(r.status == 503 for r in warm + results)
        assert f"mlxtune_embed_refusal_seconds_count {n_refused}.0" in metrics
    finally:
        proc.kill()
        proc.wait(10)
