"""What a running server holds (config, models, engine, metrics, usage log), kept on
`app.state.serve` and handed to route handlers as `state: State` (`Depends`)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from mlxtune.serve.constrain import Constraints
from mlxtune.serve.engine import Engine, GenRequest, LoadedModel
from mlxtune.serve.metrics import Metrics
from mlxtune.serve.routing import Routes
from mlxtune.serve.usage import UsageLog

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.serve.embeddings import EmbedService


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
    # One thread tokenizes (off the event loop; one at a time, as HF tokenizers prefer).
    tokenizer_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="mlxtune-tokenize")
    )
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    routes: Routes = field(default_factory=dict)  # serve.routes, checked
    constraints: Constraints = field(default_factory=Constraints)  # response_format grammars
    embed: EmbedService | None = None  # POST /v1/embeddings (serve/embeddings.py)

    def record(self, req: GenRequest, endpoint: str, status: int, finish: str | None) -> None:
        """A request the engine took: its metrics and its usage row."""
        latency = time.perf_counter() - req.submitted_at
        ttft = None if req.first_token_at is None else req.first_token_at - req.submitted_at
        m = self.metrics
        m.requests.labels(req.model, str(status)).inc()
        if status == 200:
            m.latency.labels(req.model).observe(latency)
            if ttft is not None:
                m.ttft.labels(req.model).observe(ttft)
        m.tokens.labels(req.model, "in").inc(len(req.prompt))
        m.tokens.labels(req.model, "out").inc(req.completion_tokens)
        if req.route is not None:
            m.routed.labels(req.route, req.model, str(status)).inc()
        if req.response_format:
            m.constrained.labels(req.model, req.response_format, str(status)).inc()
        self.usage.log(
            endpoint=endpoint, model=req.model, prompt_tokens=len(req.prompt),
            completion_tokens=req.completion_tokens, latency_s=round(latency, 6),
            ttft_s=None if ttft is None else round(ttft, 6), status=status,
            finish_reason=finish, route=req.route, response_format=req.response_format,
            images=req.images,
        )  # fmt: skip

    def record_refusal(self, status: int, model: str | None) -> None:
        """A request refused before the engine saw it (key, body, model, queue): counted in
        /metrics, not stored, so refusals cannot grow the usage log."""
        embedders = self.embed.embedders if self.embed else {}
        known = model in self.models or model in embedders
        label = model if known else "unknown"  # bounded label values
        self.metrics.requests.labels(label, str(status)).inc()


def get_state(request: Request) -> ServeState:
    """The server's state, from a request (handlers get it as `state: State`)."""
    state: ServeState = request.app.state.serve
    return state


async def _state_dependency(request: Request) -> ServeState:
    # async: FastAPI runs a plain function dependency on a worker thread, a hop per request
    return get_state(request)


State = Annotated[ServeState, Depends(_state_dependency)]  # a handler's `state: State`
