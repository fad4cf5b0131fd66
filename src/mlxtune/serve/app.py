"""The FastAPI app: `create_app(cfg, models=None)` builds the state, the lifespan that runs the
engine, the error handlers (every error is OpenAI-style JSON) and the body-size limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlxtune.errors import MlxtuneError
from mlxtune.serve import embeddings, wire
from mlxtune.serve.engine import Engine, LoadedModel
from mlxtune.serve.metrics import Metrics
from mlxtune.serve.models import default_model_name, load_models, usage_db_path
from mlxtune.serve.routes import router
from mlxtune.serve.state import ServeState, get_state
from mlxtune.serve.usage import UsageLog
from mlxtune.serve.wire import ApiError

if TYPE_CHECKING:
    from mlxtune.config import Config


def create_app(cfg: Config, models: dict[str, LoadedModel] | None = None) -> FastAPI:
    """The app for `cfg`: loads the models (unless given); the engine runs with the app's
    lifespan, so nothing generates until the app is started."""
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
    app = FastAPI(
        title="mlxtune serve",
        description="OpenAI-compatible API for a base model and its named adapters.",
        lifespan=_lifespan,
    )
    app.state.serve = ServeState(
        cfg=cfg,
        models=models,
        engine=engine,
        metrics=metrics,
        usage=UsageLog(usage_db_path(cfg, adapters)),
        api_key=cfg.serve.resolved_api_key(),
        default_model=default,
        started=time.time(),
        embed=embeddings.build_service(cfg, models, metrics.registry),
    )
    app.add_middleware(BodyLimit, limit=cfg.serve.max_body_bytes)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
    app.include_router(embeddings.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServeState = app.state.serve
    state.engine.start()
    if state.embed:
        state.embed.worker.start()
    try:
        yield
    finally:
        await asyncio.to_thread(state.engine.stop)
        if state.embed:
            await asyncio.to_thread(state.embed.worker.stop)
        state.usage.close()


# ---------------------------------------------------------------------------------------------
# Errors: OpenAI-style JSON, never a traceback; refusals of generation requests are logged


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    if not exc.logged:
        get_state(request).record_refusal(request, exc.status, exc.model)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    get_state(request).record_refusal(request, 400, None)
    message, param = wire.validation_error(exc.errors())
    return JSONResponse(wire.error_body(message, param=param), status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    get_state(request).record_refusal(request, exc.status_code, None)
    return JSONResponse(wire.error_body(str(exc.detail)), status_code=exc.status_code)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(wire.error_body("internal server error", "server_error"), status_code=500)


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
        payload = wire.error_body(f"request body over {self.limit} bytes", code="body_too_large")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
