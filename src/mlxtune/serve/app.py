"""The FastAPI app: `create_app(cfg, models=None)` builds the state, the lifespan that runs the
engine, the error handlers (every error is OpenAI-style JSON) and the guards (key, body)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlxtune.errors import MlxtuneError
from mlxtune.serve import embeddings, wire
from mlxtune.serve.admin import router as admin_router
from mlxtune.serve.engine import Engine, LoadedModel
from mlxtune.serve.guard import BodyLimit, KeyGate
from mlxtune.serve.metrics import Metrics
from mlxtune.serve.models import default_model_name, load_models, usage_db_path
from mlxtune.serve.routes import router
from mlxtune.serve.routing import check_routes
from mlxtune.serve.state import ServeState, get_state
from mlxtune.serve.usage import UsageLog
from mlxtune.serve.wire import ApiError

if TYPE_CHECKING:
    from mlxtune.config import Config

log = logging.getLogger("mlxtune.serve")


def create_app(cfg: Config, models: dict[str, LoadedModel] | None = None) -> FastAPI:
    """The app for `cfg`: loads the models (unless given); the engine runs with the app's
    lifespan, so nothing generates until the app is started."""
    default = default_model_name(cfg)
    if default not in (cfg.serve.base_name, *cfg.serve.adapters, *cfg.serve.routes):
        raise MlxtuneError(f"serve.default_model: {default!r} is not a served model")
    routes = check_routes(cfg, [cfg.serve.base_name, *cfg.serve.adapters])
    if models is None:
        models = load_models(cfg)
    adapters = {n: Path(m.adapter) for n, m in models.items() if m.adapter}
    metrics = Metrics()
    engine = Engine(
        models,
        max_queue=cfg.serve.max_queue,
        max_batch_size=cfg.serve.max_batch_size,
        prompt_cache_size=cfg.serve.prompt_cache_size,
        on_step=metrics.on_step,
    )
    app = FastAPI(
        title="mlxtune serve",
        description="OpenAI-compatible API for a base model and its named adapters.",
        lifespan=_lifespan,
        redoc_url=None,  # one docs page: /docs
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.serve = ServeState(
        cfg=cfg,
        models=models,
        engine=engine,
        metrics=metrics,
        usage=UsageLog(usage_db_path(cfg, adapters), retention_days=cfg.serve.usage_retention_days),
        api_key=cfg.serve.resolved_api_key(),
        default_model=default,
        started=time.time(),
        embed=embeddings.build_service(cfg, models, metrics.registry),
        routes=routes,
    )
    # The key first (outermost), then the body limits: no key, no 413 or 408 hints. Then the
    # embeddings queue's admission, so a slow body never holds a place in it.
    app.add_middleware(embeddings.EmbedAdmission, state=app.state.serve)
    app.add_middleware(BodyLimit, state=app.state.serve)
    app.add_middleware(KeyGate, state=app.state.serve)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
    app.include_router(embeddings.router)
    app.include_router(admin_router)
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
        state.tokenizer_pool.shutdown(wait=False)
        if state.embed:
            await asyncio.to_thread(state.embed.worker.stop)
        await asyncio.to_thread(state.usage.close)


# ---------------------------------------------------------------------------------------------
# Errors: OpenAI-style JSON, never a traceback; refusals are counted in /metrics


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    if not exc.logged:
        get_state(request).record_refusal(exc.status, exc.model)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    get_state(request).record_refusal(400, None)
    message, param = wire.validation_error(exc.errors())
    return JSONResponse(wire.error_body(message, param=param), status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    get_state(request).record_refusal(exc.status_code, None)
    return JSONResponse(wire.error_body(str(exc.detail)), status_code=exc.status_code)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse(wire.error_body("internal server error", "server_error"), status_code=500)
