"""`mlxtune serve` end to end on the tiny model and an adapter that changes its outputs.

Most tests run the app in process (`create_app` with the real models, through Starlette's
TestClient, driven by the official openai client). What needs a real server runs
`python -m mlxtune serve` in a subprocess: overload, client disconnects, SIGTERM, start-up
failures and restarts after `runs promote`."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import REPO, cli_env, make_adapter, run_cli
from mlxtune.bench.procs import free_port
from mlxtune.config import Config
from mlxtune.runtime import wait_until_ready

pytestmark = pytest.mark.e2e

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = [{"role": "user", "content": "What does the MLX framework do?"}]


def serve_config(model_dir: Path, adapter: Path, usage_db: Path) -> dict[str, Any]:
    """Small caps so overload and size limits are reachable in a test."""
    return {
        "model": {"path": str(model_dir)},
        "serve": {
            "adapters": {"ad1": str(adapter)},
            "api_key": API_KEY,
            "max_queue": 2,
            "max_batch_size": 2,
            "max_tokens_cap": 1000,
            "max_prompt_tokens": 1000,
            "max_body_bytes": 20_000,
            "usage_db": str(usage_db),
        },
    }


def mlx_lm_greedy(
    model_dir: Path, adapter: Path | None, prompt: list[int], n: int
) -> tuple[str, int]:
    """Reference: raw mlx-lm generation (what mlx_lm.generate returns) with the same adapter
    and prompt ids; the text and the number of tokens generated before any EOS."""
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(model_dir), adapter_path=str(adapter) if adapter else None)
    steps = list(stream_generate(model, tokenizer, prompt, max_tokens=n))
    tokens = [r.token for r in steps if r.token not in tokenizer.eos_token_ids]
    return "".join(r.text for r in steps), len(tokens)


def chat_prompt_ids(model_dir: Path) -> list[int]:
    from mlx_lm import load

    from mlxtune.formats import encode_prompt

    _, tokenizer = load(str(model_dir))
    return encode_prompt(tokenizer, QUESTION)


def sse_events(raw: str) -> list[str]:
    """The `data:` payloads of a text/event-stream body, checking its framing on the way."""
    blocks = [b for b in raw.split("\n\n") if b]
    assert raw.endswith("\n\n"), raw[-40:]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks[:3]
    return [b.removeprefix("data: ") for b in blocks]


# ---------------------------------------------------------------------------------------------
# In process: the app factory with the real models


@dataclass
class App:
    http: Any  # starlette TestClient (an httpx client speaking to the app directly)
    cfg: Config
    usage_db: Path
    model_dir: Path
    adapter_dir: Path

    def client(self, key: str = API_KEY) -> Any:
        import openai

        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0
        )


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    tmp = tmp_path_factory.mktemp("serve-app")
    adapter = make_adapter(tiny_model, tmp / "runs" / "ad1", b_scale=0.05)
    usage_db = tmp / "usage.sqlite"
    cfg = Config.model_validate(serve_config(tiny_model, adapter, usage_db))
    with TestClient(create_app(cfg)) as http:  # `with`: the lifespan starts the engine
        yield App(http, cfg, usage_db, tiny_model, adapter)


def test_models_health_and_fingerprint(served: App) -> None:
    from mlxtune.io import sha256_file

    ids = [m.id for m in served.client().models.list().data]
    assert ids == ["base", "ad1"]
    assert served.http.get("/health").json() == {"status": "ok"}  # no key: only that
    health = served.http.get("/health", headers=AUTH).json()
    assert health["status"] == "ok"
    assert health["adapters"][0]["name"] == "ad1"
    assert health["adapters"][0]["sha256"] == sha256_file(
        served.adapter_dir / "adapters.safetensors"
    )
    assert {"uptime_s", "queue_depth", "base_model"} <= set(health)


def test_health_is_503_until_the_engine_runs(served: App, tmp_path: Path) -> None:
    """Ready means /health is 200: an app whose lifespan has not started is not ready."""
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    cfg = served.cfg.model_copy(
        update={"serve": served.cfg.serve.model_copy(update={"usage_db": tmp_path / "u.sqlite"})}
    )
    app = create_app(cfg, models=served.http.app.state.serve.models)  # the test seam: no load
    try:
        r = TestClient(app).get("/health")  # no `with`: no lifespan, no engine
        assert r.status_code == 503 and r.json()["status"] == "error"
    finally:
        app.state.serve.usage.close()


def test_greedy_chat_equals_mlx_lm_with_adapter(served: App) -> None:
    client = served.client()
    prompt = chat_prompt_ids(served.model_dir)
    answers, generated = {}, {}
    for name, adapter in (("ad1", served.adapter_dir), ("base", None)):
        r = client.chat.completions.create(
            model=name, messages=QUESTION, max_tokens=24, temperature=0
        )
        assert r.model == name
        expected, n_tokens = mlx_lm_greedy(served.model_dir, adapter, prompt, 24)
        assert r.choices[0].message.content == expected
        assert r.usage.prompt_tokens == len(prompt)
        assert r.usage.completion_tokens == n_tokens
        answers[name] = r.choices[0].message.content
        generated[name] = n_tokens
    assert answers["ad1"] != answers["base"], "the adapter must change the answer"

    # Streaming gives the same text, chunk by chunk, naming the adapter.
    stream = client.chat.completions.create(
        model="ad1", messages=QUESTION, max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    assert all(c.model == "ad1" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answers["ad1"]
    assert chunks[-1].choices[0].finish_reason == ("length" if generated["ad1"] == 24 else "stop")


@pytest.mark.parametrize("chat", [True, False])
def test_stream_is_openai_chunks_then_done(served: App, chat: bool) -> None:
    """What a raw SSE client sees: `data: {chunk}` events, one id, the role first (chat),
    the finish reason and usage last, then `data: [DONE]`."""
    path, field = ("/v1/chat/completions", "messages") if chat else ("/v1/completions", "prompt")
    body = {"model": "ad1", field: QUESTION if chat else "MLX", "max_tokens": 6, "stream": True}
    r = served.http.post(path, json=body, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    *data, done = sse_events(r.text)
    assert done == "[DONE]"
    chunks = [json.loads(d) for d in data]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("length", "stop")
    assert last["usage"]["completion_tokens"] <= 6 and "usage" not in chunks[0]


def test_completions_raw_prompt_and_adapters_in_parallel(served: App) -> None:
    from mlx_lm import load

    from mlxtune.formats import encode

    _, tokenizer = load(str(served.model_dir))
    prompt = "MLX runs on"
    ids = encode(tokenizer, prompt)
    want = {
        "ad1": mlx_lm_greedy(served.model_dir, served.adapter_dir, ids, 16)[0],
        "base": mlx_lm_greedy(served.model_dir, None, ids, 16)[0],
    }
    got: dict[str, str] = {}

    def ask(name: str) -> None:
        r = served.client().completions.create(
            model=name, prompt=prompt, max_tokens=16, temperature=0
        )
        got[name] = r.choices[0].text

    # Both models at once: one BatchGenerator each, interleaved, never mixed.
    threads = [threading.Thread(target=ask, args=(n,)) for n in want]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want


def test_no_model_named_means_the_first_adapter(served: App) -> None:
    r = served.http.post("/v1/completions", json={"prompt": "MLX", "max_tokens": 2}, headers=AUTH)
    assert r.status_code == 200 and r.json()["model"] == "ad1"


def test_seed_and_stop(served: App) -> None:
    client = served.client()
    kw = {"model": "ad1", "messages": QUESTION, "max_tokens": 12, "temperature": 1.0}
    a = client.chat.completions.create(seed=7, **kw)
    b = client.chat.completions.create(seed=7, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    full = a.choices[0].message.content
    # A stop string from the second half that is not blank: stop must cut the answer there.
    starts = range(len(full) // 2, len(full) - 1)
    stop = next(full[i : i + 2] for i in starts if full[i : i + 2].strip())
    c = client.chat.completions.create(seed=7, stop=[stop], **kw)
    assert c.choices[0].message.content == full[: full.index(stop)]
    assert c.choices[0].finish_reason == "stop"


def test_unknown_model_auth_and_bad_input(served: App) -> None:
    import openai

    client = served.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="/etc/passwd", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").models.list()
    r = served.http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 401  # no key: refused before the body is even parsed
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ad1", messages=QUESTION, max_tokens=5000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ad1", messages=QUESTION, temperature=9)
    assert e.value.body["param"] == "temperature"
    http = served.http
    for body in (b"{not json", b'{"messages": []}', b'{"messages": [{"role": "x"}]}'):
        r = http.post("/v1/chat/completions", content=body, headers=AUTH)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], r.text
        assert "Traceback" not in r.text
    r = http.post("/v1/completions", json={"prompt": "x" * 30_000}, headers=AUTH)
    assert r.status_code == 413
    # Chunked, so no Content-Length to refuse on: the limit counts the bytes as they come.
    chunked = iter([b'{"prompt": "', b"x" * 30_000, b'"}'])
    r = http.post("/v1/completions", content=chunked, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = http.post("/v1/completions", json={"prompt": "word " * 3000, "max_tokens": 1}, headers=AUTH)
    assert r.status_code == 400 and "cap" in r.json()["error"]["message"]


def test_usage_log_and_metrics(served: App) -> None:
    def rows_after(rowid: int) -> list[tuple[str | None, int, int | None, int | None]]:
        query = "SELECT model, status, prompt_tokens, completion_tokens FROM requests"
        with sqlite3.connect(served.usage_db) as db:  # only this test's rows: earlier tests log too
            return db.execute(query + " WHERE rowid > ? ORDER BY rowid", (rowid,)).fetchall()

    with sqlite3.connect(served.usage_db) as db:
        (last,) = db.execute("SELECT coalesce(max(rowid), 0) FROM requests").fetchone()
    http = served.http
    replies = {}
    for model, code in (("ad1", 200), ("nope", 404)):
        body = {"model": model, "prompt": "MLX", "max_tokens": 4}
        replies[model] = http.post("/v1/completions", json=body, headers=AUTH)
        assert replies[model].status_code == code
    assert http.post("/v1/completions", json={"prompt": ""}, headers=AUTH).status_code == 400
    served.http.app.state.serve.usage.flush()
    rows = rows_after(last)
    # Requests the engine took are stored; refusals (400, 404, ...) are only counted.
    assert [(r[0], r[1]) for r in rows] == [("ad1", 200)], rows
    usage = replies["ad1"].json()["usage"]
    assert rows[0][2:] == (usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["completion_tokens"] > 0
    text = http.get("/metrics", headers=AUTH).text
    assert 'mlxtune_requests_total{model="ad1",status="200"}' in text
    assert 'mlxtune_requests_total{model="unknown",status="404"}' in text
    assert 'mlxtune_requests_total{model="unknown",status="400"}' in text
    for name in (
        "mlxtune_request_latency_seconds_bucket",
        "mlxtune_time_to_first_token_seconds_bucket",
        'mlxtune_tokens_total{direction="out",model="ad1"}',
        "mlxtune_queue_depth",
        "mlxtune_batch_size",
        "mlxtune_peak_memory_bytes",
    ):
        assert name in text, name
    assert http.get("/docs", headers=AUTH).status_code == 200


# ---------------------------------------------------------------------------------------------
# In a subprocess: what needs a real server


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    usage_db: Path
    model_dir: Path
    adapter_dir: Path

    def client(self, key: str = API_KEY) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, timeout=60, max_retries=0)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=60)


def start_server(cfg_path: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxtune", "serve", "-c", str(cfg_path), "--port", str(port),
         *extra],
        cwd=REPO,
        env=cli_env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    problem = wait_until_ready(proc, url + "/health", 90)
    if problem:
        proc.kill()
        raise AssertionError(f"server {problem}: {log.read_text()}")
    return proc, url


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    adapter = make_adapter(tiny_model, tmp / "runs" / "ad1", b_scale=0.05)
    usage_db = tmp / "usage.sqlite"
    cfg_path = tmp / "serve.yaml"
    cfg_path.write_text(json.dumps(serve_config(tiny_model, adapter, usage_db)))
    log = tmp / "server.log"
    proc, url = start_server(cfg_path, log)
    try:
        yield Server(url, proc, log, usage_db, tiny_model, adapter)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_stream_over_http(server: Server) -> None:
    """Through uvicorn and a real socket, the openai client's stream ends with a finish."""
    stream = server.client().chat.completions.create(
        model="ad1", messages=QUESTION, max_tokens=8, temperature=0, stream=True
    )
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_overload_answers_503_at_once(server: Server) -> None:
    # max_batch_size=2 decoding + max_queue=2 waiting: the rest must be refused immediately.
    results: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        with server.http() as http:
            r = http.post(
                "/v1/completions", json={"model": "ad1", "prompt": "MLX", "max_tokens": 300}
            )
        with lock:
            results.append((r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert len(results) == 10 and len(served) + len(refused) == 10, results
    assert len(served) >= 4 and len(refused) >= 1, results
    assert all(r[2] is not None and int(r[2]) > 0 for r in refused)
    assert max(r[1] for r in refused) < min(r[1] for r in served)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_generation(server: Server, stream: bool) -> None:
    def cancelled_rows() -> list[tuple[int, int]]:
        with sqlite3.connect(server.usage_db) as db:
            query = "SELECT status, completion_tokens FROM requests WHERE finish_reason = ?"
            return db.execute(query, ("cancelled",)).fetchall()

    before = len(cancelled_rows())
    body = {"model": "base", "prompt": "MLX", "max_tokens": 1000, "stream": stream}
    if stream:
        with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                break  # read one chunk, then hang up
    else:
        with server.http() as http, pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=body, timeout=0.5)  # give up mid-generation
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(cancelled_rows()) == before:
        time.sleep(0.1)
    rows = cancelled_rows()
    assert len(rows) == before + 1
    assert rows[-1][0] == 499 and rows[-1][1] < 1000  # stopped early, not run to max_tokens
    deadline = time.monotonic() + 2
    with server.http() as http:
        while http.get("/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/health").json()["active"] == 0


def test_sigterm_finishes_inflight_then_exits(server: Server) -> None:
    from mlx_lm import load

    from mlxtune.formats import encode

    _, tokenizer = load(str(server.model_dir))
    prompt = encode(tokenizer, "MLX")
    _, want = mlx_lm_greedy(server.model_dir, server.adapter_dir, prompt, 200)
    out: dict[str, object] = {}

    def ask() -> None:
        r = server.client().completions.create(
            model="ad1", prompt="MLX", max_tokens=200, temperature=0
        )
        out["usage"] = r.usage.completion_tokens

    t = threading.Thread(target=ask)
    t.start()
    deadline = time.monotonic() + 30
    while not httpx.get(server.url + "/health", headers=AUTH).json()["active"]:  # in flight
        assert time.monotonic() < deadline and t.is_alive(), "the request never ran"
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    assert t.is_alive(), "the request finished before SIGTERM: nothing was in flight"
    t.join(60)
    assert out.get("usage") == want, server.log.read_text()  # finished, not cut short
    assert server.proc.wait(30) == 0
    assert "stopped after" in server.log.read_text()
    assert "Traceback" not in server.log.read_text()


def test_bad_adapter_refuses_to_start(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora"}))
    (broken / "adapters.safetensors").write_bytes(b"not safetensors")
    missing = run_cli(
        "serve", "--set", f"model.path={tiny_model}", "--adapter", f"x={tmp_path / 'nope'}",
        "--port", "0", timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "serve.adapters.x" in missing.stderr and "Traceback" not in missing.stderr
    bad = run_cli(
        "serve", "--set", f"model.path={tiny_model}", "--adapter", f"x={broken}", "--port", "0",
        timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "serve.adapters.x" in bad.stderr and "Traceback" not in bad.stderr


def test_promote_and_rollback_change_what_serve_answers(tiny_model: Path, tmp_path: Path) -> None:
    """serve.adapters: {prod: "@current"} follows `runs promote` / `runs rollback` (on restart)."""
    from fake_runs import fabricate_run

    runs = tmp_path / "runs"
    for name, seed in (("run-a", 1), ("run-b", 2)):
        adapter = make_adapter(tiny_model, tmp_path / f"ad-{name}", b_scale=0.05, seed=seed)
        fabricate_run(runs, name, base_model=str(tiny_model), adapter_from=adapter)
    cfg_path = tmp_path / "serve.yaml"
    cfg = {
        "model": {"path": str(tiny_model)},
        "train": {"runs_dir": str(runs), "registry_dir": str(tmp_path / ".mx")},
        "serve": {"adapters": {"prod": "@current"}},
    }
    cfg_path.write_text(json.dumps(cfg))

    def answer() -> tuple[str, dict[str, object]]:
        proc, url = start_server(cfg_path, tmp_path / "server.log")
        try:
            health = httpx.get(url + "/health", timeout=10).json()
            body = {"model": "prod", "messages": QUESTION, "max_tokens": 12, "temperature": 0}
            resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
            assert resp["model"] == "prod"
            return resp["choices"][0]["message"]["content"], health["adapters"][0]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    def runs_cli(*args: str) -> None:
        result = run_cli("runs", *args, "-c", str(cfg_path), timeout=60)
        assert result.returncode == 0, result.stderr

    runs_cli("promote", "run-a")
    text_a, health_a = answer()
    assert health_a["run"] == "run-a" and health_a["alias"] == "current"
    runs_cli("promote", "run-b")
    text_b, health_b = answer()
    assert health_b["run"] == "run-b" and text_b != text_a
    runs_cli("rollback")
    text_back, health_back = answer()
    assert health_back["run"] == "run-a" and text_back == text_a
