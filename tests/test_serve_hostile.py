"""`mlxtune serve` under hostile input (issue 20): no request may stop the server, leak what
the key protects, grow the usage log without bound or hold a connection for ever.

In process (`create_app` with the real tiny model, the official openai client and raw httpx)
wherever the app alone decides; a subprocess where a real socket or process matters:
timeouts, connection cap, the shutdown grace period, exit on a dead worker. Ends with a
bounded Hypothesis fuzz pass over the request bodies /openapi.json describes."""

from __future__ import annotations

import json
import signal
import socket
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
from test_serve import API_KEY as KEY
from test_serve import AUTH, serve_config, sse_events, start_server

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
HELLO = [{"role": "user", "content": "What does MLX do?"}]


def base_config(model_dir: Path, adapter: Path, tmp: Path, **serve: Any) -> dict[str, Any]:
    """test_serve's config with the default body limit (1 MB prompts get through to the
    prompt checks) and small generation caps."""
    cfg = serve_config(model_dir, adapter, tmp / "usage.sqlite")
    cfg["serve"].update(
        max_body_bytes=1_000_000, max_tokens_cap=64, default_max_tokens=8, max_prompt_tokens=512
    )
    cfg["serve"].update(serve)
    return cfg


@dataclass
class App:
    http: Any  # starlette TestClient
    cfg: Config
    usage_db: Path

    def client(self, key: str = KEY) -> Any:
        import openai

        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0
        )

    def rows(self) -> int:
        self.http.app.state.serve.usage.flush()
        with sqlite3.connect(self.usage_db) as db:
            return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])

    def metric(self, name: str) -> float:
        """The sum of every sample of `name` (all label values) on /metrics."""
        text = self.http.get("/metrics", headers=AUTH).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )

    def complete(self, **body: Any) -> httpx.Response:
        body.setdefault("max_tokens", 4)
        return self.http.post("/v1/completions", json={"prompt": "MLX", **body}, headers=AUTH)


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("hostile") / "ad1", b_scale=0.05)


@pytest.fixture(scope="module")
def app(tiny_model: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    tmp = tmp_path_factory.mktemp("hostile-app")
    cfg = Config.model_validate(base_config(tiny_model, adapter, tmp))
    with TestClient(create_app(cfg)) as http:
        yield App(http, cfg, tmp / "usage.sqlite")


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error


# ---------------------------------------------------------------------------------------------
# 1. One request must not stop generation


def test_seed_out_of_range_is_refused_and_generation_goes_on(app: App) -> None:
    for seed in (2**64, -1, 10**40):
        assert_openai_error(app.complete(temperature=1, seed=seed), 400, "seed")
    assert app.complete(temperature=1, seed=2**64 - 1).status_code == 200  # the largest key
    assert app.complete().status_code == 200
    assert app.http.get("/health").json() == {"status": "ok"}


def test_an_engine_error_fails_only_its_request(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault injected into the worker (at insert, and mid-decode) answers that request with
    an OpenAI error (a stream: an error event, then the end) and the worker keeps serving."""
    from mlxtune.serve import engine

    sampler, flush = engine.make_sampler, engine.Engine._flush

    def bad_sampler(sampling: Any) -> Any:
        if sampling.seed == 666:
            raise ValueError("injected insert fault")
        return sampler(sampling)

    def bad_flush(req: Any, *, final: bool) -> None:
        if req.sampling.seed == 667:
            raise ValueError("injected decode fault")
        flush(req, final=final)

    monkeypatch.setattr(engine, "make_sampler", bad_sampler)
    monkeypatch.setattr(engine.Engine, "_flush", staticmethod(bad_flush))
    for seed in (666, 667):
        r = app.complete(temperature=1, seed=seed)
        assert_openai_error(r, 500)
        assert "injected" not in r.text  # the detail goes to the log, not to the client
        r = app.complete(temperature=1, seed=seed, stream=True)
        assert r.status_code == 200
        events = sse_events(r.text)
        assert json.loads(events[-1])["error"]["type"] == "server_error"
    r = app.complete(max_tokens=3)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    assert app.http.get("/health").status_code == 200


def test_a_dead_worker_exits_the_process(tiny_model: Path, adapter: Path, tmp_path: Path) -> None:
    """A worker thread that dies anyway (here: SystemExit injected at insert) must not leave a
    zombie answering 503: the process exits non-zero so a supervisor restarts it."""
    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(json.dumps(base_config(tiny_model, adapter, tmp_path)))
    port = free_port()
    inject = (
        "import sys; from mlxtune.serve import engine; orig = engine.Engine._insert\n"
        "def insert(self, slot, req):\n"
        "    if req.sampling.seed == 668: raise SystemExit('injected')\n"
        "    orig(self, slot, req)\n"
        "engine.Engine._insert = insert\n"
        "from mlxtune.cli import main\n"
        f"sys.argv = ['mlxtune', 'serve', '-c', {str(cfg_path)!r}, '--port', '{port}']\n"
        "main()\n"
    )
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", inject], cwd=REPO, env=cli_env(), stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        from mlxtune.runtime import wait_until_ready

        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(proc, url + "/health", 90) is None, log.read_text()
        body = {"prompt": "MLX", "max_tokens": 4, "temperature": 1, "seed": 668}
        r = httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=30)
        assert r.status_code in (500, 503) and "error" in r.json()
        assert proc.wait(15) != 0
        assert "error: generation worker died (SystemExit: injected)" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------
# 2. Cheap limits before tokenizing, tokenizing off the event loop


def test_huge_prompt_is_refused_before_tokenizing(app: App) -> None:
    huge = "word " * 180_000  # 900k characters: seconds to tokenize
    stalls: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            app.http.get("/health")
            stalls.append(time.perf_counter() - t0)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        t0 = time.perf_counter()
        r = app.http.post("/v1/completions", json={"prompt": huge}, headers=AUTH)
        refused_in = time.perf_counter() - t0
        chat = app.http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": huge}]},
            headers=AUTH,
        )
    finally:
        done.set()
        poller.join(30)
    assert_openai_error(r, 400, "prompt")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert_openai_error(chat, 400, "messages")
    assert refused_in < 1.0, refused_in
    assert max(stalls) < 0.5, max(stalls)
    many = [{"role": "user", "content": "hi"}] * 5000
    r = app.http.post("/v1/chat/completions", json={"messages": many}, headers=AUTH)
    assert_openai_error(r, 400, "messages")


# ---------------------------------------------------------------------------------------------
# 3. What is open without the key


def test_without_the_key_health_says_only_ok(app: App) -> None:
    assert app.http.get("/health").json() == {"status": "ok"}
    detail = app.http.get("/health", headers=AUTH).json()
    assert detail["status"] == "ok" and detail["adapters"][0]["name"] == "ad1"
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert_openai_error(app.http.get(path), 401)
        assert app.http.get(path, headers=AUTH).status_code == 200, path
    assert app.http.get("/redoc", headers=AUTH).status_code == 404  # one docs page


def test_public_endpoints_open_what_the_operator_lists(app: App, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    serve = app.cfg.serve.model_copy(
        update={"usage_db": tmp_path / "u.sqlite", "public_endpoints": ["/health", "/metrics"]}
    )
    state = app.http.app.state.serve
    opened = create_app(app.cfg.model_copy(update={"serve": serve}), models=state.models)
    try:
        http = TestClient(opened)
        assert http.get("/metrics").status_code == 200
        assert "adapters" in http.get("/health").json()  # 503 (no engine), but in detail
        assert http.get("/openapi.json").status_code == 401
    finally:
        opened.state.serve.usage.close()


# ---------------------------------------------------------------------------------------------
# 4. Refusals are counted, not stored; the log has a retention; writes leave the event loop


def test_refusals_are_counted_not_stored(app: App) -> None:
    rows = app.rows()
    refused = app.metric("mlxtune_requests_total")
    for _ in range(30):
        r = app.http.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401
    assert_openai_error(app.complete(model="nope"), 404)
    assert_openai_error(app.complete(max_tokens=0), 400)
    big = {"prompt": "x" * 1_100_000}
    assert_openai_error(app.http.post("/v1/completions", json=big, headers=AUTH), 413)
    assert app.rows() == rows
    assert app.metric("mlxtune_requests_total") == refused + 33
    assert app.complete().status_code == 200
    assert app.rows() == rows + 1


def test_usage_rows_have_a_retention_and_writes_do_not_wait(tmp_path: Path) -> None:
    from mlxtune.serve import UsageLog

    path = tmp_path / "usage.sqlite"
    UsageLog(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO requests (time, status) VALUES ('2001-01-01T00:00:00Z', 200)")
    log = UsageLog(path, retention_days=30)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database
    t0 = time.perf_counter()
    log.log(endpoint="chat", model="a", status=200)
    assert time.perf_counter() - t0 < 0.1  # the caller (the event loop) never waits on SQLite
    holder.execute("COMMIT")
    holder.close()
    log.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT time, model FROM requests").fetchall()
    assert [r[1] for r in rows] == ["a"]  # the 2001 row is past retention


# ---------------------------------------------------------------------------------------------
# 5. One queue across models (the accounting, with the worker not started)


def fake_engine(batch: int, queue: int) -> Any:
    from mlxtune.serve import Engine, LoadedModel

    models = {n: LoadedModel(n, None, None) for n in ("base", "ad1")}
    return Engine(models, max_queue=queue, max_batch_size=batch)


def test_admission_counts_free_slots_per_model() -> None:
    from mlxtune.serve import GenRequest, QueueFull

    engine = fake_engine(batch=2, queue=1)
    for model in ("base", "base", "ad1", "ad1"):  # all four have a free decoding slot
        engine.submit(GenRequest(model=model, prompt=[1], max_tokens=1))
    assert engine.queue_depth() == 0
    engine.submit(GenRequest(model="ad1", prompt=[1], max_tokens=1))  # waits: the one place
    assert engine.queue_depth() == 1
    with pytest.raises(QueueFull):
        engine.submit(GenRequest(model="base", prompt=[1], max_tokens=1))


def test_a_cancelled_waiter_leaves_the_queue_at_once() -> None:
    from mlxtune.serve import GenRequest

    engine = fake_engine(batch=1, queue=2)
    events: list[tuple[str, Any]] = []
    first = GenRequest(model="base", prompt=[1], max_tokens=1)
    waiter = GenRequest(
        model="base", prompt=[1], max_tokens=1, emit=lambda k, p: events.append((k, p))
    )
    engine.submit(first)
    engine.submit(waiter)
    assert engine.queue_depth() == 1
    engine.cancel(waiter)
    assert events == [("done", "cancelled")] and engine.queue_depth() == 0


# ---------------------------------------------------------------------------------------------
# 7. The smaller items


def test_lone_surrogates_are_400s(app: App) -> None:
    for path, body in (
        ("/v1/completions", b'{"model": "\\ud800", "prompt": "x"}'),
        ("/v1/completions", b'{"prompt": "a\\udfffb"}'),
        ("/v1/completions", b'{"prompt": "x", "stop": ["\\ud800"]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
    ):
        assert_openai_error(app.http.post(path, content=body, headers={**AUTH, **JSON}), 400)


def test_tiny_temperature_or_top_p_is_greedy(app: App) -> None:
    greedy = app.complete(max_tokens=12, temperature=0).json()["choices"][0]["text"]
    for sampling in ({"temperature": 1e-300}, {"temperature": 1.5, "top_p": 1e-300}):
        r = app.complete(max_tokens=12, **sampling)
        assert r.json()["choices"][0]["text"] == greedy, sampling
    for raw in (b'{"prompt": "x", "temperature": Infinity}', b'{"prompt": "x", "top_p": NaN}'):
        r = app.http.post("/v1/completions", content=raw, headers={**AUTH, **JSON})
        assert_openai_error(r, 400)


def test_empty_model_name_is_refused(app: App) -> None:
    assert_openai_error(app.complete(model=""), 400, "model")


@pytest.mark.parametrize(
    "field",
    [
        {"max_tokens": "8"},
        {"max_tokens": True},
        {"max_tokens": 8.0},
        {"temperature": "0.5"},
        {"seed": "7"},
        {"stream": "true"},
        {"stream": 1},
        {"n": "1"},
    ],
)
def test_numbers_and_bools_are_not_coerced(app: App, field: dict[str, Any]) -> None:
    assert_openai_error(app.complete(**field), 400, next(iter(field)))


def test_the_key_comes_before_the_body(app: App) -> None:
    r = app.http.post("/v1/chat/completions", content=b"{not json", headers=JSON)
    assert_openai_error(r, 401)
    r = app.http.post("/v1/chat/completions", content=b"{not json", headers={**JSON, **AUTH})
    assert_openai_error(r, 400)


def test_api_key_padding_is_stripped_and_empty_is_refused(tmp_path: Path) -> None:
    from mlxtune.errors import ConfigError

    assert Config.model_validate({"serve": {"api_key": "  k \n"}}).serve.resolved_api_key() == "k"
    with pytest.raises((ConfigError, ValueError), match="api_key"):
        Config.model_validate({"serve": {"api_key": "   "}})
    empty = run_cli("serve", "--api-key", "", "--port", "0", timeout=60)
    assert empty.returncode != 0
    # blamed on the flag that carried it
    assert "--api-key" in empty.stderr and "Traceback" not in empty.stderr


def test_413_is_counted(app: App) -> None:
    before = app.metric("mlxtune_requests_total")
    r = app.http.post("/v1/completions", json={"prompt": "x" * 1_100_000}, headers=AUTH)
    assert_openai_error(r, 413)
    assert app.metric("mlxtune_requests_total") == before + 1


# ---------------------------------------------------------------------------------------------
# 6 and 7 over a real socket: timeouts, the connection cap, the shutdown grace period


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def server(
    tiny_model: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hostile-server")
    cfg = base_config(
        tiny_model, adapter, tmp, header_timeout_s=1, body_timeout_s=1, keep_alive_timeout_s=1,
        max_connections=8, shutdown_grace_s=2, max_tokens_cap=100_000,
    )  # fmt: skip
    cfg_path = tmp / "serve.yaml"
    cfg_path.write_text(json.dumps(cfg))
    proc, url = start_server(cfg_path, tmp / "server.log")
    try:
        yield Server(url, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`, and what it sent before."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        pass
    return True, got


def test_slow_headers_slow_bodies_and_idle_connections_are_closed(server: Server) -> None:
    silent = connect(server.url)  # says nothing at all
    slow = connect(server.url)
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # ... and never ends the headers
    body = connect(server.url)
    body.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro"
    )  # fmt: skip
    idle = connect(server.url)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    for sock, expect in ((silent, b""), (slow, b""), (body, b" 408 "), (idle, b" 200 ")):
        closed, got = closed_within(sock, 4)
        sock.close()
        assert closed, expect
        assert expect in got, got[:200]


def test_connections_over_the_cap_are_closed_at_once(server: Server) -> None:
    held = [connect(server.url) for _ in range(8)]
    try:
        extra = connect(server.url)
        closed, _ = closed_within(extra, 0.5)  # well inside the 1 s header timeout
        extra.close()
        assert closed
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_shutdown_grace_ends_streams_with_an_error_event(server: Server) -> None:
    """Last on this server: SIGTERM while a stream runs past the 2 s grace period."""
    body = {"model": "base", "prompt": "MLX", "max_tokens": 100_000, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=30
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        rest = [line for line in lines if line]
    assert time.monotonic() - t0 < 10
    last = json.loads(rest[-1].removeprefix("data: "))
    assert last["error"]["code"] == "shutting_down", rest[-1]
    assert server.proc.wait(15) == 0


# ---------------------------------------------------------------------------------------------
# The bounded fuzz pass


def test_fuzz_request_bodies_from_openapi(app: App) -> None:
    """Bodies built from /openapi.json's request schemas, each field either a value of its
    type or something hostile: never a 5xx (but a deliberate 503), never a traceback."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    schema = app.http.get("/openapi.json", headers=AUTH).json()
    components = schema["components"]["schemas"]
    bodies = {"/v1/completions": "CompletionBody", "/v1/chat/completions": "ChatBody"}
    fields = {path: sorted(components[name]["properties"]) for path, name in bodies.items()}

    text = st.text(max_size=40) | st.sampled_from(["\ud800", "../../etc/passwd", "'; DROP--"])
    hostile = st.recursive(
        st.none() | st.booleans() | text
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False) | st.sampled_from([0, 1, 2**64, 1e-300, -0.0]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )  # fmt: skip
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", ""]), "content": hostile}
    )
    messages = st.lists(message | hostile, min_size=0, max_size=3) | hostile

    valid = {
        "/v1/completions": {"prompt": "MLX"},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    }

    @st.composite
    def request(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
        """A valid body with a few fields made hostile, or hostile fields alone."""
        path = draw(st.sampled_from(sorted(bodies)))
        body = dict(valid[path]) if draw(st.booleans()) else {}
        for key in draw(st.lists(st.sampled_from(fields[path]), unique=True, max_size=3)):
            body[key] = draw(messages if key == "messages" else hostile)
        if draw(st.booleans()):
            body["max_tokens"] = draw(st.integers(min_value=-2, max_value=8))
        return path, body

    seen: dict[int, int] = {}

    @seed(20)
    @settings(
        max_examples=300, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip
    @given(request())
    def one(case: tuple[str, dict[str, Any]]) -> None:
        path, body = case
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
        r = app.http.post(path, content=raw, headers={**AUTH, **JSON})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500 or r.status_code == 503, (body, r.text)
        assert "Traceback" not in r.text and 'File "' not in r.text

    one()
    assert seen.get(400, 0) > 50 and seen.get(200, 0) > 0, seen
    assert app.complete().status_code == 200
    assert app.http.get("/health").json() == {"status": "ok"}
