"""`mlxtune serve`: an OpenAI-compatible server that really serves the adapter.

Unlike `mlx_lm.server`, every model it can answer with is named in the config and loaded at
start (the base plus each adapter); a request picks one by name, the response says which one
answered, an unknown name is a 404, and no request can make the server load a path. A configured
adapter that fails to load stops the server from starting.

The web layer (FastAPI) validates, queues and streams; `serve_engine.Engine` owns the models.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlxtune.errors import MlxtuneError
from mlxtune.io import sha256_file
from mlxtune.serve_engine import Engine, GenRequest, LoadedModel, QueueFull

if TYPE_CHECKING:
    from mlxtune.config import Config

API_KEY_ENV = "MLXTUNE_API_KEY"
RETRY_AFTER_S = 1


# ---------------------------------------------------------------------------------------------
# Which models: adapter resolution and loading


def resolve_adapter_ref(name: str, ref: Path | str, cfg: Config) -> Path:
    """An adapter entry's value -> its directory. The one place that interprets the value
    A value "@ALIAS" is the run that `mlxtune runs promote --as ALIAS` points at."""
    if str(ref).startswith("@"):
        from mlxtune.runs import resolve_alias

        try:
            return resolve_alias(str(ref), cfg)
        except MlxtuneError as e:
            raise MlxtuneError(f"serve.adapters.{name}: {e}") from None
    path = Path(ref)
    if not path.is_dir() and not path.is_absolute():
        under_runs = cfg.train.runs_dir / path
        if under_runs.is_dir():
            path = under_runs
    if not path.is_dir():
        raise MlxtuneError(f"serve.adapters.{name}: {ref} is not a directory")
    if not (path / "adapter_config.json").is_file():
        raise MlxtuneError(f"serve.adapters.{name}: {path} has no adapter_config.json")
    if not (path / "adapters.safetensors").is_file():
        raise MlxtuneError(f"serve.adapters.{name}: {path} has no adapters.safetensors")
    return path


def resolve_adapters(cfg: Config) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, ref in cfg.serve.adapters.items():
        if not name or name != name.strip() or "/" in name:
            raise MlxtuneError(f"serve.adapters: invalid adapter name {name!r}")
        if name == cfg.serve.base_name:
            raise MlxtuneError(f"serve.adapters.{name}: name clashes with serve.base_name")
        out[name] = resolve_adapter_ref(name, ref, cfg)
    return out


def _share_base_weights(base: Any, adapted: Any, adapter_dir: Path) -> int:
    """Point the adapted model's frozen weights at the base model's arrays, so N adapters cost
    one base in memory. Weights stored in the adapter file (LoRA matrices, or whole layers of a
    full fine-tune) stay the adapter's own. Returns how many arrays are shared."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    stored: Any = mx.load(str(adapter_dir / "adapters.safetensors"))
    own = set(stored)
    base_params: dict[str, Any] = dict(tree_flatten(base.parameters()))
    adapted_params: list[tuple[str, Any]] = tree_flatten(adapted.parameters())  # type: ignore[assignment]
    shared = []
    for key, value in adapted_params:
        if key in own:
            continue
        base_key = key.replace(".linear.", ".")
        twin = base_params.get(base_key)
        if twin is not None and twin.shape == value.shape and twin.dtype == value.dtype:
            shared.append((key, twin))
    adapted.update(tree_unflatten(shared))
    # Evaluate here: lazy arrays made on this thread's stream cannot be evaluated by the worker.
    mx.eval(adapted.parameters())
    return len(shared)


def load_models(cfg: Config) -> dict[str, LoadedModel]:
    """Base plus every configured adapter; any failure is a one-line MlxtuneError."""
    from mlxtune.modeling import load_model

    adapters = resolve_adapters(cfg)
    import mlx.core as mx

    base_model, base_tok, _ = load_model(cfg.model)
    mx.eval(base_model.parameters())
    models = {cfg.serve.base_name: LoadedModel(cfg.serve.base_name, base_model, base_tok)}
    for name, path in adapters.items():
        try:
            model, tok, _ = load_model(cfg.model, path)
            _share_base_weights(base_model, model, path)
        except MlxtuneError as e:
            raise MlxtuneError(f"serve.adapters.{name}: {e}") from None
        except Exception as e:  # mlx-lm raises plain errors for mismatched adapters
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MlxtuneError(f"serve.adapters.{name}: cannot load {path}: {first}") from None
        fingerprint = sha256_file(path / "adapters.safetensors")
        ref = str(cfg.serve.adapters[name])
        alias = ref.removeprefix("@") if ref.startswith("@") else None
        models[name] = LoadedModel(name, model, tok, str(path), fingerprint, alias)
    return models


def default_model_name(cfg: Config) -> str:
    if cfg.serve.default_model:
        return cfg.serve.default_model
    return next(iter(cfg.serve.adapters), cfg.serve.base_name)


def usage_db_path(cfg: Config, adapters: dict[str, Path]) -> Path:
    if cfg.serve.usage_db is not None:
        return cfg.serve.usage_db
    first = next(iter(adapters.values()), None)
    return (first if first is not None else cfg.train.runs_dir) / "usage.sqlite"


# ---------------------------------------------------------------------------------------------
# Usage log and metrics


class UsageLog:
    """Every request, one row: time, model, tokens, latency, status."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
            "endpoint TEXT, model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, "
            "latency_s REAL, ttft_s REAL, status INTEGER, finish_reason TEXT)"
        )

    def log(self, **row: Any) -> None:
        row.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT INTO requests ({cols}) VALUES ({marks})", tuple(row.values()))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlxtune_requests", "Requests by status and model", ["model", "status"], registry=r
        )
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
        self.latency = Histogram(
            "mlxtune_request_latency_seconds", "End-to-end latency", ["model"],
            buckets=buckets, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "mlxtune_time_to_first_token_seconds", "Time to first token", ["model"],
            buckets=buckets, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "mlxtune_tokens", "Tokens in (prompt) and out (completion)", ["model", "direction"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("mlxtune_queue_depth", "Requests waiting", registry=r)
        self.batch_size = Gauge("mlxtune_batch_size", "Sequences being decoded", registry=r)
        # One gauge per reading; `mlxtune bench` scrapes *peak_memory_bytes.
        self.memory = {
            kind: Gauge(f"mlxtune_{kind}_memory_bytes", f"MLX {kind} memory", registry=r)
            for kind in ("active", "peak", "cache")
        }

    def on_step(self, active: int, queued: int) -> None:
        self.batch_size.set(active)
        self.queue_depth.set(queued)

    def sample_memory(self) -> None:
        import mlx.core as mx

        self.memory["active"].set(mx.get_active_memory())
        self.memory["peak"].set(mx.get_peak_memory())
        self.memory["cache"].set(mx.get_cache_memory())


# ---------------------------------------------------------------------------------------------
# Request bodies (OpenAI's, with what we support)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Model name: the base or a configured adapter.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, ge=0, description="Seed for reproducible sampling.")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionBody(_Body):
    prompt: str = Field(..., min_length=1, description="Raw prompt text (no chat template).")


# ---------------------------------------------------------------------------------------------
# The app


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code,
        )  # fmt: skip
        self.headers = headers or {}
        self.model: str | None = None  # for the usage log
        self.logged = False  # the usage log already has this request


def _error_json(status: int, message: str, type_: str, param: str | None, code: str | None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, chunked ones too."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps(
            _error_json(
                413, f"request body over {self.limit} bytes", "invalid_request_error", None,
                "body_too_large",
            )
        ).encode()  # fmt: skip
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@dataclass
class ServeState:
    cfg: Config
    models: dict[str, LoadedModel]
    engine: Engine
    metrics: Metrics
    usage: UsageLog
    api_key: str | None
    default_model: str
    started: float


def create_app(cfg: Config, models: dict[str, LoadedModel] | None = None) -> FastAPI:
    """The FastAPI app: loads the models (unless given), starts the worker with the app."""
    from contextlib import asynccontextmanager

    default = default_model_name(cfg)
    if default not in (cfg.serve.base_name, *cfg.serve.adapters):
        raise MlxtuneError(f"serve.default_model: {default!r} is not a served model")
    if models is None:
        models = load_models(cfg)
    adapters = {n: Path(m.adapter) for n, m in models.items() if m.adapter}
    metrics = Metrics()
    engine = Engine(
        models,
        max_queue=cfg.serve.max_queue,
        max_batch_size=cfg.serve.max_batch_size,
        on_step=metrics.on_step,
    )
    state = ServeState(
        cfg=cfg,
        models=models,
        engine=engine,
        metrics=metrics,
        usage=UsageLog(usage_db_path(cfg, adapters)),
        api_key=cfg.serve.resolved_api_key(),
        default_model=default,
        started=time.time(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)
            state.usage.close()

    app = FastAPI(
        title="mlxtune serve",
        description="OpenAI-compatible API for a base model and its named adapters.",
        lifespan=lifespan,
    )
    app.state.serve = state
    app.add_middleware(BodyLimit, limit=cfg.serve.max_body_bytes)
    _install_error_handlers(app)
    _install_routes(app, state)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def log_refusal(request: Request, status: int, model: str | None) -> None:
        state: ServeState = app.state.serve
        path = request.url.path
        if path.startswith("/v1/") and request.method == "POST":
            endpoint = "chat" if path.endswith("chat/completions") else "completions"
            state.usage.log(endpoint=endpoint, model=model, status=status, latency_s=0.0)
            label = model if model in state.models else "unknown"  # bounded label values
            state.metrics.requests.labels(label, str(status)).inc()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if not exc.logged:
            log_refusal(request, exc.status, exc.model)
        body = _error_json(exc.status, exc.message, exc.type, exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        log_refusal(request, 400, None)
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else "invalid request body"
        return JSONResponse(
            _error_json(400, message, "invalid_request_error", param, None), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        log_refusal(request, exc.status_code, None)
        return JSONResponse(
            _error_json(exc.status_code, str(exc.detail), "invalid_request_error", None, None),
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            _error_json(500, "internal server error", "server_error", None, None), status_code=500
        )


def _install_routes(app: FastAPI, state: ServeState) -> None:
    cfg = state.cfg.serve

    def check_key(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), state.api_key.encode()
        ):
            raise ApiError(
                401, "invalid or missing API key", type_="authentication_error",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    @app.get("/health")
    async def health() -> JSONResponse:
        """Ready when this returns 200: models loaded, worker running."""
        ok = state.engine.alive and state.engine.error is None
        body = {
            "status": "ok" if ok else "error",
            "error": state.engine.error,
            "base_model": state.cfg.model.path,
            "base_name": cfg.base_name,
            "default_model": state.default_model,
            "adapters": [
                {
                    "name": m.name,
                    "path": m.adapter,
                    "run": Path(m.adapter).name,
                    "alias": m.alias,
                    "sha256": m.fingerprint,
                }
                for m in state.models.values()
                if m.adapter
            ],
            "uptime_s": round(time.time() - state.started, 3),
            "queue_depth": state.engine.queue_depth(),
            "active": state.engine.active_count,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        state.metrics.queue_depth.set(state.engine.queue_depth())
        state.metrics.sample_memory()
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # As a dependency the key is checked before the body is parsed: no key, no 400 hints.
    auth = [Depends(check_key)]

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        created = int(state.started)
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": created,
                "owned_by": "mlxtune",
                "root": state.cfg.model.path,
                "adapter": m.adapter,
                "adapter_sha256": m.fingerprint,
            }
            for m in state.models.values()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None, dependencies=auth)
    async def chat(body: ChatBody, request: Request) -> Response:
        from mlxtune.formats import encode_prompt

        name = pick_model(body)
        messages = [{"role": _role(m.role), "content": m.text()} for m in body.messages]
        try:
            prompt = encode_prompt(state.models[name].tokenizer, messages)
        except Exception as e:  # a template that rejects the conversation
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ApiError(
                400, f"messages: cannot render prompt: {first}", param="messages"
            ) from None
        return await generate(request, body, name, prompt, chat=True)

    @app.post("/v1/completions", response_model=None, dependencies=auth)
    async def completions(body: CompletionBody, request: Request) -> Response:
        from mlxtune.formats import encode

        name = pick_model(body)
        prompt = encode(state.models[name].tokenizer, body.prompt)
        return await generate(request, body, name, prompt, chat=False)

    def pick_model(body: _Body) -> str:
        name = body.model or state.default_model
        if name not in state.models:
            err = ApiError(
                404, f"model {name[:100]!r} not found; served: {', '.join(state.models)}",
                param="model", code="model_not_found",
            )  # fmt: skip
            err.model = name[:100]
            raise err
        return name

    async def generate(
        request: Request, body: _Body, name: str, prompt: list[int], *, chat: bool
    ) -> Response:
        endpoint = "chat" if chat else "completions"
        max_tokens = body.max_completion_tokens or body.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_cap:
            raise ApiError(
                400, f"max_tokens: {max_tokens} is over the cap of {cfg.max_tokens_cap}",
                param="max_tokens",
            )  # fmt: skip
        if not prompt:
            raise ApiError(400, "prompt is empty after tokenization", param="prompt")
        if len(prompt) > cfg.max_prompt_tokens:
            raise ApiError(
                400, f"prompt has {len(prompt)} tokens, over the cap of {cfg.max_prompt_tokens}",
                param="messages" if chat else "prompt", code="context_length_exceeded",
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, payload: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        req = GenRequest(
            model=name, prompt=prompt, max_tokens=max_tokens, temperature=body.temperature,
            top_p=body.top_p, seed=body.seed, stop=body.stops(), emit=emit, stream=body.stream,
        )  # fmt: skip
        try:
            state.engine.submit(req)
        except QueueFull as e:
            finish(req, endpoint, 503, None)
            busy = ApiError(
                503, f"server busy: {e}; retry later", type_="server_error",
                code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
            busy.logged = True
            raise busy from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.stream:
            return StreamingResponse(
                stream(request, req, rid, created, chat, endpoint, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        # Not streaming: the worker keeps the text on the request and sends only the finish.
        watcher = asyncio.create_task(watch_disconnect(request, req))
        try:
            kind, finish_reason = await events.get()
        except asyncio.CancelledError:
            req.cancel()
            finish(req, endpoint, 499, "cancelled")
            raise
        finally:
            watcher.cancel()
        if kind == "error":
            finish(req, endpoint, 503, None)
            failed = ApiError(503, str(finish_reason), type_="server_error")
            failed.logged = True
            raise failed
        if finish_reason == "cancelled":
            finish(req, endpoint, 499, "cancelled")
            return Response(status_code=499)
        finish(req, endpoint, 200, finish_reason)
        content = req.text
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": name,
                "choices": [choice],
                "usage": usage(req),
            }
        )

    async def watch_disconnect(request: Request, req: GenRequest) -> None:
        """Cancel the generation when the client goes away (the worker then finishes it)."""
        while not req.cancelled:
            await asyncio.sleep(0.25)
            if await request.is_disconnected():
                req.cancel()

    async def stream(
        request: Request,
        req: GenRequest,
        rid: str,
        created: int,
        chat: bool,
        endpoint: str,
        events: asyncio.Queue[tuple[str, Any]],
    ) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish_reason: str | None, role: bool = False) -> str:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                choice["delta"] = delta
            else:
                choice["text"] = text or ""
            payload = {"id": rid, "object": obj, "created": created, "model": req.model,
                       "choices": [choice]}  # fmt: skip
            return f"data: {json.dumps(payload)}\n\n"

        status, finish_reason = 499, "cancelled"
        watcher = asyncio.create_task(watch_disconnect(request, req))
        try:
            if chat:
                yield chunk("", None, role=True)
            while True:
                kind, payload = await events.get()
                if kind == "text":
                    yield chunk(payload, None)
                elif kind == "done":
                    finish_reason = payload
                    if payload == "cancelled":
                        break
                    final = chunk(None, payload)
                    tail = json.loads(final[6:])
                    tail["usage"] = usage(req)
                    yield f"data: {json.dumps(tail)}\n\n"
                    yield "data: [DONE]\n\n"
                    status = 200
                    break
                else:
                    err = _error_json(503, str(payload), "server_error", None, None)
                    yield f"data: {json.dumps(err)}\n\n"
                    status, finish_reason = 503, "error"
                    break
        finally:
            watcher.cancel()
            if status != 200:
                req.cancel()
            finish(req, endpoint, status, finish_reason)

    def usage(req: GenRequest) -> dict[str, int]:
        p, c = len(req.prompt), req.completion_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def finish(req: GenRequest, endpoint: str, status: int, finish_reason: str | None) -> None:
        latency = time.perf_counter() - req.submitted_at
        ttft = None if req.first_token_at is None else req.first_token_at - req.submitted_at
        m = state.metrics
        m.requests.labels(req.model, str(status)).inc()
        if status == 200:
            m.latency.labels(req.model).observe(latency)
            if ttft is not None:
                m.ttft.labels(req.model).observe(ttft)
        m.tokens.labels(req.model, "in").inc(len(req.prompt) if status != 503 else 0)
        m.tokens.labels(req.model, "out").inc(req.completion_tokens)
        state.usage.log(
            endpoint=endpoint, model=req.model, prompt_tokens=len(req.prompt),
            completion_tokens=req.completion_tokens, latency_s=round(latency, 6),
            ttft_s=None if ttft is None else round(ttft, 6), status=status,
            finish_reason=finish_reason,
        )  # fmt: skip


def _role(role: str) -> str:
    return "system" if role == "developer" else role


# ---------------------------------------------------------------------------------------------
# Running it


@dataclass
class ServeResult:
    url: str
    models: list[str]
    requests: int


def serve(cfg: Config, on_ready: Callable[[str, list[str]], None] | None = None) -> ServeResult:
    """Load every model, bind, serve until SIGINT/SIGTERM, then drain and return."""
    import uvicorn

    app = create_app(cfg)
    state: ServeState = app.state.serve
    family = socket.AF_INET6 if ":" in cfg.serve.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.serve.host, cfg.serve.port))
    except OSError as e:
        sock.close()
        raise MlxtuneError(
            f"serve.port: cannot bind {cfg.serve.host}:{cfg.serve.port} ({e.strerror})"
        ) from None
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=30, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        names = list(state.models)
        orig_startup = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await orig_startup(sockets=sockets)
            on_ready(url, names)

        server.startup = startup  # type: ignore[method-assign]
    # uvicorn handles SIGINT/SIGTERM: stop accepting, finish in-flight requests, then the
    # lifespan exit stops the worker.
    # uvicorn re-raises the signal it caught after its graceful shutdown; a no-op SIGTERM
    # handler turns that into a normal return (exit 0, usage log closed).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    total = int(sum(s.value for s in _counter_samples(state.metrics)))
    return ServeResult(url=url, models=list(state.models), requests=total)


def _counter_samples(metrics: Metrics) -> list[Any]:
    return [
        s for fam in metrics.requests.collect() for s in fam.samples if s.name.endswith("_total")
    ]
