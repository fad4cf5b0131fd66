"""`POST /v1/embeddings`: OpenAI's embeddings endpoint over the served models.

Every served language model (the base and each adapter) answers by pooling its hidden states;
with `embed.kind: dedicated` an embedding model loaded through mlx-embeddings is served beside
them under its own name. Requests go to one EmbedWorker thread, which batches those that wait
together; its queue is bounded like chat's (serve.max_queue, then 503 + Retry-After), and
`embed.fail_fast` refuses any request that finds the model busy. A request takes its place in
that queue in `EmbedAdmission`, before FastAPI routes it: under a burst, a refusal never waits
for the framework, the body parser or the tokenizer (docs/serve.md, "Overload").
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from mlxtune.embeddings import (
    Embedder,
    EmbeddingError,
    EmbeddingLimitError,
    EmbedLimits,
    check_dimensions,
    encode_inputs,
)
from mlxtune.errors import MlxtuneError
from mlxtune.serve.embed_worker import EmbedJob, EmbedWorker
from mlxtune.serve.engine import LoadedModel, QueueFull
from mlxtune.serve.guard import send_error, since_received
from mlxtune.serve.models import default_model_name
from mlxtune.serve.openai_fields import check_extras
from mlxtune.serve.routes import RETRY_AFTER_S
from mlxtune.serve.state import ServeState, State
from mlxtune.serve.wire import ApiError, Text, error_body

if TYPE_CHECKING:
    from mlxtune.config import Config

# ---------------------------------------------------------------------------------------------
# Wire shapes (pure)


class EmbeddingBody(BaseModel):
    """Strict like the chat bodies: "8" is not a dimension, 1.0 is not a token id. Unknown
    fields are kept as extras so `openai_fields.check_extras` answers 400 naming them."""

    model_config = ConfigDict(extra="allow")

    input: Text | list[Text] | list[StrictInt] | list[list[StrictInt]] = Field(
        ..., description="A text, a list of texts, a token array or a list of token arrays."
    )
    model: Text | None = Field(
        None, min_length=1, max_length=256,
        description="A served model, or the dedicated embed model.",
    )  # fmt: skip
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(
        None, gt=0, description="Truncate (Matryoshka models only)."
    )
    user: Text | None = Field(None, max_length=256)

    def texts(self) -> list[str]:
        """The string inputs (token arrays need no tokenizing)."""
        if isinstance(self.input, str):
            return [self.input]
        return [t for t in self.input if isinstance(t, str)]


def encode_vector(vector: Any, encoding_format: str) -> list[float] | str:
    """A float list, or base64 of little-endian float32 (what the openai client decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector.tolist()]


def embedding_response(
    model: str, vectors: Any, encoding_format: str, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# ---------------------------------------------------------------------------------------------
# The service: embedders, worker, metrics


@dataclass
class EmbedService:
    embedders: dict[str, Embedder]
    worker: EmbedWorker
    limits: EmbedLimits
    default_model: str
    dedicated: dict[str, str] = field(default_factory=dict)  # name -> model path
    queue_gauge: Any = None  # mlxtune_embed_queue_depth
    refusal_seconds: Any = None  # mlxtune_embed_refusal_seconds

    def sample_metrics(self) -> None:
        if self.queue_gauge is not None:
            self.queue_gauge.set(self.worker.queue_depth())

    def swap(self, name: str, loaded: LoadedModel, cfg: Config) -> None:
        """After /admin/reload: pool the new adapter's hidden states. The worker shares this
        dict, so a batch already taken finishes on the old weights, the next uses the new."""
        from mlxtune.embeddings import pooled_embedder

        self.embedders[name] = pooled_embedder(loaded.model, loaded.tokenizer, cfg)

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.worker.alive and self.worker.error is None,
            "error": self.worker.error,
            "models": list(self.embedders),
            "dedicated": list(self.dedicated),
            "fail_fast": self.worker.fail_fast,
            "queue_depth": self.worker.queue_depth(),
            "busy": self.worker.busy,
        }


def build_service(cfg: Config, models: dict[str, LoadedModel], registry: Any) -> EmbedService:
    """Pooled embedders over the loaded models, plus the dedicated model when configured.
    A dedicated model without the `embed` extra fails here, at start, with the install line."""
    from prometheus_client import Gauge, Histogram

    from mlxtune.embeddings import load_dedicated, pooled_embedder

    embed = cfg.embed
    embedders: dict[str, Embedder] = {
        name: pooled_embedder(m.model, m.tokenizer, cfg) for name, m in models.items()
    }
    dedicated: dict[str, str] = {}
    default = default_model_name(cfg)
    if embed.kind == "dedicated" and embed.model:
        name = embed.served_name or "embed"
        if name in embedders:
            raise MlxtuneError(f"embed.name: {name!r} clashes with a served model; set embed.name")
        embedders[name] = load_dedicated(embed.model, cfg)
        dedicated[name] = embed.model
        default = name
    queue = Gauge("mlxtune_embed_queue_depth", "Embedding requests waiting", registry=registry)
    refusal = Histogram(
        "mlxtune_embed_refusal_seconds",
        "Overload refusals (503): headers received to refusal sent",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=registry,
    )  # fmt: skip
    batch = Histogram(
        "mlxtune_embed_batch_inputs", "Inputs per embedding forward pass",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
    )  # fmt: skip
    worker = EmbedWorker(
        embedders,
        max_queue=cfg.serve.max_queue,
        batch_size=embed.batch_size,
        fail_fast=embed.fail_fast,
        on_batch=lambda model, requests, inputs, seconds: batch.observe(inputs),
    )
    limits = EmbedLimits(embed.max_inputs, embed.max_tokens_per_input)
    return EmbedService(embedders, worker, limits, default, dedicated, queue, refusal)


# ---------------------------------------------------------------------------------------------
# Admission

EMBED_ADMISSION = "mlxtune.embed_admission"  # scope key: the place EmbedAdmission took


class EmbedAdmission:
    """ASGI middleware inside the key and body guards: `POST /v1/embeddings` takes its place in
    the worker's queue here, before routing, body parsing or tokenizing, or is refused with 503
    + Retry-After at once. The place is handed back if the request ends without a job. A
    refusal carries `Server-Timing: refusal;dur=MS` (headers received to refusal sent), also
    observed in mlxtune_embed_refusal_seconds."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.state.embed
        if (
            service is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/v1/embeddings"
        ):
            await self.app(scope, receive, send)
            return
        try:
            admission = service.worker.admit()
        except QueueFull as e:
            self.state.record_refusal(503, None)
            took = since_received(scope)
            service.refusal_seconds.observe(took)
            body = error_body(f"server busy: {e}; retry later", "server_error", code="overloaded")
            await send_error(
                send, 503, body, retry_after=str(RETRY_AFTER_S),
                server_timing=f"refusal;dur={took * 1e3:.3f}",
            )  # fmt: skip
            return
        scope[EMBED_ADMISSION] = admission
        try:
            await self.app(scope, receive, send)
        finally:
            service.worker.release(admission)  # a no-op once the job is queued


# ---------------------------------------------------------------------------------------------
# The endpoint

# The API key is checked by guard.KeyGate before a route (or the body) is reached.
router = APIRouter()
# The body is read by hand (after the overload check); its schema still documents it.
_BODY_SCHEMA = {
    "requestBody": {
        "content": {"application/json": {"schema": EmbeddingBody.model_json_schema()}},
        "required": True,
    }
}
CHARS_PER_TOKEN_CAP = 16  # as serve.max_prompt_chars: a text this long cannot fit, untokenized


def _refused(err: ApiError, model: str | None) -> ApiError:
    """A refusal for the app's handler to count in /metrics (not stored in the usage log)."""
    err.model = model
    return err


def _busy(model: str | None, e: QueueFull) -> ApiError:
    busy = ApiError(
        503, f"server busy: {e}; retry later", type_="server_error", code="overloaded",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )  # fmt: skip
    return _refused(busy, model)


def _check_chars(body: EmbeddingBody, limits: EmbedLimits) -> None:
    """The check that costs nothing, made before tokenizing: no text longer than the token
    cap could ever be at CHARS_PER_TOKEN_CAP characters a token."""
    cap = CHARS_PER_TOKEN_CAP * limits.max_tokens_per_input
    for i, text in enumerate(body.texts()):
        if len(text) > cap:
            where = "input" if isinstance(body.input, str) else f"input[{i}]"
            raise ApiError(
                400, f"{where} has {len(text)} characters, over the cap of {cap}",
                param="input", code="embed.max_tokens_per_input",
            )  # fmt: skip


@router.post("/v1/embeddings", openapi_extra=_BODY_SCHEMA)
async def embeddings(request: Request, state: State) -> JSONResponse:
    started = time.perf_counter()
    service = state.embed
    if service is None:
        raise ApiError(404, "embeddings are not served")
    admission = request.scope.get(EMBED_ADMISSION)  # EmbedAdmission's place in the queue
    try:
        body = EmbeddingBody.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    check_extras(body.model_extra, "embeddings")
    name = body.model or service.default_model
    embedder = service.embedders.get(name)
    if embedder is None:
        served = ", ".join(service.embedders)
        raise _refused(
            ApiError(404, f"model {name[:100]!r} not found; served: {served}", param="model",
                     code="model_not_found"),
            name[:100],
        )  # fmt: skip
    try:
        check_dimensions(embedder, body.dimensions)
        _check_chars(body, service.limits)
        tokens = await asyncio.get_running_loop().run_in_executor(
            state.tokenizer_pool, encode_inputs, embedder, body.input, service.limits
        )  # tokenized off the event loop
    except EmbeddingError as e:
        param = "dimensions" if str(e).startswith("dimensions") else "input"
        code = e.limit if isinstance(e, EmbeddingLimitError) else None
        raise _refused(ApiError(400, str(e), param=param, code=code), name) from None
    n_tokens = sum(len(t) for t in tokens)
    try:
        future = service.worker.submit(EmbedJob(name, tokens, body.dimensions), admission)
    except QueueFull as e:
        raise _busy(name, e) from None
    try:
        vectors = await asyncio.wrap_future(future)
    except QueueFull as e:  # the worker failed while this request waited
        failed = ApiError(503, str(e), type_="server_error", code="worker_failed")
        state.usage.log(
            endpoint="embeddings", model=name, prompt_tokens=n_tokens, completion_tokens=0,
            latency_s=round(time.perf_counter() - started, 6), status=503,
        )  # fmt: skip
        state.metrics.requests.labels(name, "503").inc()
        failed.logged = True
        raise failed from None
    latency = time.perf_counter() - started
    m = state.metrics
    m.requests.labels(name, "200").inc()
    m.latency.labels(name).observe(latency)
    m.tokens.labels(name, "in").inc(n_tokens)
    state.usage.log(
        endpoint="embeddings", model=name, prompt_tokens=n_tokens, completion_tokens=0,
        latency_s=round(latency, 6), status=200,
    )  # fmt: skip
    return JSONResponse(embedding_response(name, vectors, body.encoding_format, n_tokens))
