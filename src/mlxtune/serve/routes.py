"""The HTTP endpoints: small handlers on one APIRouter. Server state arrives through
`state: State`, the API key is checked by `guard.KeyGate` before a handler (or the body
parser) runs, and every response body is built by `wire`."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse

from mlxtune.serve import wire
from mlxtune.serve.constrain import requested_format
from mlxtune.serve.engine import Failure, GenRequest, LoadedModel, QueueFull
from mlxtune.serve.guard import AUTHED
from mlxtune.serve.openai_fields import check_extras
from mlxtune.serve.routing import pick_variant
from mlxtune.serve.state import ServeState, State
from mlxtune.serve.streaming import TextChunks, mail_for, sse_bytes, stream_emit, take_ready
from mlxtune.serve.wire import ApiError, Body, ChatBody, CompletionBody
from mlxtune.structured import ResponseFormat

RETRY_AFTER_S = 1


# The API key is checked by guard.KeyGate before a route (or the body) is reached.
router = APIRouter()


@router.get("/health")
async def health(request: Request, state: State) -> JSONResponse:
    """Ready when this returns 200: models loaded, worker running. Without the key (when one
    is set) it says only that; the details need the key or "/health" in public_endpoints."""
    embed = state.embed.health() if state.embed else None
    ok = state.engine.alive and state.engine.error is None and (embed is None or embed["ok"])
    status = 200 if ok else 503
    if not (request.scope.get(AUTHED) or "/health" in state.cfg.serve.public_endpoints):
        return JSONResponse({"status": "ok" if ok else "error"}, status_code=status)
    body = {
        "status": "ok" if ok else "error",
        "error": state.engine.error,
        "base_model": state.cfg.model.path,
        "base_name": state.cfg.serve.base_name,
        "default_model": state.default_model,
        "adapters": [_health_adapter(m, m.adapter) for m in state.models.values() if m.adapter],
        "uptime_s": round(time.time() - state.started, 3),
        "queue_depth": state.engine.queue_depth(),
        "active": state.engine.active_count,
        "embeddings": embed,
    }
    return JSONResponse(body, status_code=status)


def _health_adapter(m: LoadedModel, path: str) -> dict[str, Any]:
    return {
        "name": m.name,
        "path": path,
        "run": Path(path).name,
        "alias": m.alias,
        "sha256": m.fingerprint,
    }


@router.get("/metrics")
async def metrics(state: State) -> Response:
    state.metrics.queue_depth.set(state.engine.queue_depth())
    if state.embed:
        state.embed.sample_metrics()
    state.metrics.sample_memory()
    body, media_type = state.metrics.exposition()
    return Response(body, media_type=media_type)


def _model_entry(state: ServeState, m: LoadedModel) -> dict[str, Any]:
    return wire.model_entry(
        m.name, int(state.started), state.cfg.model.path, m.adapter, m.fingerprint
    )


@router.get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    entries = [_model_entry(state, m) for m in state.models.values()]
    dedicated = state.embed.dedicated if state.embed else {}
    created = int(state.started)
    entries += [wire.model_entry(n, created, path, None, None) for n, path in dedicated.items()]
    return wire.model_list(entries)


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: State) -> dict[str, Any]:
    dedicated = state.embed.dedicated if state.embed else {}
    if model_id in dedicated:  # the embedding model served beside the language models
        return wire.model_entry(model_id, int(state.started), dedicated[model_id], None, None)
    if model_id not in state.models:
        raise ApiError(
            404, f"model {model_id[:100]!r} not found; served: {', '.join(state.models)}",
            param="model", code="model_not_found",
        )  # fmt: skip
    return _model_entry(state, state.models[model_id])


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatBody, request: Request, state: State) -> Response:
    from mlxtune.formats import encode_prompt
    from mlxtune.serve.tools import supports_tools

    check_extras(body.model_extra, "chat")
    name = _pick_model(state, body, request)
    cap = state.cfg.serve.max_messages
    if len(body.messages) > cap:
        raise ApiError(
            400, f"messages: {len(body.messages)} is over the cap of {cap}", param="messages"
        )
    max_tokens = _check_limits(state, body, chat=True)
    if body.image_urls() or state.models[name].processor is not None:
        from mlxtune.vlm.serve import refuse_images_to_text_model, vision_chat

        refuse_images_to_text_model(body, state.models[name])
        return await vision_chat(state, body, name, max_tokens)
    tokenizer = state.models[name].tokenizer
    tools = body.tools_in_use()
    if tools and not supports_tools(tokenizer):
        raise ApiError(400, "tools: this model's chat template has no tool calling", param="tools")
    messages = [m.as_message() for m in body.messages]
    render = functools.partial(
        encode_prompt, tools=tools, template_kwargs=body.chat_template_kwargs
    )
    try:
        prompt = await _tokenize(state, render, tokenizer, messages)
    except Exception as e:  # a template that rejects the conversation
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ApiError(400, f"messages: cannot render prompt: {first}", param="messages") from None
    _check_prompt(state, prompt, chat=True)
    constraint = await _constrain(state, body, name, max_tokens)
    job = _submit(
        state, body, name, prompt, max_tokens, chat=True, logprobs=body.logprobs_wanted(),
        **constraint,
    )  # fmt: skip
    job.tools = tools
    return await _respond(state, request, body, job)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionBody, request: Request, state: State) -> Response:
    from mlxtune.formats import encode

    check_extras(body.model_extra, "completions")
    name = _pick_model(state, body, request)
    if state.models[name].processor is not None:
        raise ApiError(
            400, f"model {name!r} is a vision-language model: use /v1/chat/completions",
            param="model",
        )  # fmt: skip
    max_tokens = _check_limits(state, body, chat=False)
    tokenizer = state.models[name].tokenizer
    prompts = [
        p if isinstance(p, list) else await _tokenize(state, encode, tokenizer, p)
        for p in body.prompts()
    ]
    for prompt in prompts:
        _check_prompt(state, prompt, chat=False)
    if len(prompts) > 1:
        if body.stream:
            raise ApiError(400, "stream: a batch of prompts cannot stream", param="stream")
        return await _batch(state, request, body, name, prompts, max_tokens)
    constraint = await _constrain(state, body, name, max_tokens)
    job = _submit(
        state, body, name, prompts[0], max_tokens, chat=False, logprobs=body.logprobs,
        **constraint,
    )  # fmt: skip
    return await _respond(state, request, body, job)


# ---------------------------------------------------------------------------------------------
# Generation: check, submit to the engine, then answer whole or as server-sent events


@dataclass
class _Job:
    """One submitted generation and what its response needs."""

    req: GenRequest
    events: asyncio.Queue[tuple[str, Any]]  # (kind, payload) from the engine's `emit`
    chat: bool
    rid: str
    created: int
    tools: list[dict[str, Any]] | None = None  # tool calls are parsed from the whole answer
    include_usage: bool = False

    @property
    def endpoint(self) -> str:
        return "chat" if self.chat else "completions"

    def usage(self) -> dict[str, int]:
        return wire.usage(len(self.req.prompt), self.req.completion_tokens)


def _pick_model(state: ServeState, body: Body, request: Request) -> str:
    name = body.model or state.default_model
    if name in state.routes:  # A/B: one variant by weight, sticky per user or session
        session = body.user or request.headers.get("x-session-id")
        return pick_variant(name, state.routes[name], session)
    if name not in state.models:
        err = ApiError(
            404, f"model {name[:100]!r} not found; served: {', '.join(state.models)}",
            param="model", code="model_not_found",
        )  # fmt: skip
        err.model = name[:100]
        raise err
    return name


def _check_limits(state: ServeState, body: Body, *, chat: bool) -> int:
    """The request's max_tokens, once it and the prompt's characters are within the caps:
    checks that cost nothing, made before tokenizing."""
    cfg = state.cfg.serve
    max_tokens = body.max_completion_tokens or body.max_tokens or cfg.default_max_tokens
    if max_tokens > cfg.max_tokens_cap:
        raise ApiError(
            400, f"max_tokens: {max_tokens} is over the cap of {cfg.max_tokens_cap}",
            param="max_tokens",
        )  # fmt: skip
    if body.chars() > cfg.prompt_chars_cap:
        raise ApiError(
            400, f"prompt has {body.chars()} characters, over the cap of {cfg.prompt_chars_cap}",
            param="messages" if chat else "prompt", code="context_length_exceeded",
        )  # fmt: skip
    return max_tokens


async def _tokenize(state: ServeState, encode: Callable[..., list[int]], *args: Any) -> list[int]:
    """Tokenize on the tokenizer thread: a long prompt never stalls the event loop."""
    return await asyncio.get_running_loop().run_in_executor(state.tokenizer_pool, encode, *args)


def _check_prompt(state: ServeState, prompt: list[int], *, chat: bool) -> None:
    cap = state.cfg.serve.max_prompt_tokens
    if not prompt:
        raise ApiError(400, "prompt is empty after tokenization", param="prompt")
    if len(prompt) > cap:
        raise ApiError(
            400, f"prompt has {len(prompt)} tokens, over the cap of {cap}",
            param="messages" if chat else "prompt", code="context_length_exceeded",
        )  # fmt: skip


def _submit(
    state: ServeState, body: Body, name: str, prompt: list[int], max_tokens: int, *,
    chat: bool, logprobs: int | None = None, fmt: ResponseFormat | None = None,
    processors: list[Any] | None = None,
) -> _Job:  # fmt: skip
    """Queue the generation, or answer 503 Retry-After at once when the queue is full."""
    vocab = state.models[name].model.args.vocab_size if body.logit_bias else 0
    if body.logit_bias and any(int(t) >= vocab for t in body.logit_bias):
        raise ApiError(400, f"logit_bias: token ids must be below {vocab}", param="logit_bias")
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    interval_s = state.cfg.serve.stream_interval_ms / 1000 if body.stream else 0.0
    # called on the engine's thread (or this one)
    emit = stream_emit(mail_for(asyncio.get_running_loop()).post, events, interval_s)
    req = GenRequest(
        model=name, prompt=prompt, max_tokens=max_tokens, sampling=body.sampling(logprobs),
        stop=body.stops(), emit=emit, stream=body.stream,
        route=asked if (asked := body.model or state.default_model) in state.routes else None,
        logits_processors=processors or [], response_format=fmt.type if fmt else None,
    )  # fmt: skip
    job = _Job(req, events, chat, wire.new_id(chat), int(time.time()))
    job.include_usage = body.include_usage
    try:
        state.engine.submit(req)
    except QueueFull as e:
        busy = ApiError(
            503, f"server busy: {e}; retry later", type_="server_error",
            code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)},
        )  # fmt: skip
        busy.model = name
        raise busy from None
    return job


async def _constrain(state: ServeState, body: Body, name: str, max_tokens: int) -> dict[str, Any]:
    """`response_format` -> this request's grammar processors (compiled off the event loop)."""
    fmt = requested_format(body.response_format)
    processors = await state.constraints.for_request(state.models[name], fmt, max_tokens)
    return {"fmt": fmt, "processors": processors}


async def _respond(state: ServeState, request: Request, body: Body, job: _Job) -> Response:
    if job.tools:
        job.req.stream = False  # calls are parsed from the whole answer, then streamed
    if body.stream:
        # Starlette cancels this stream when the client disconnects; its `finally` cancels
        # the generation.
        return EventSourceResponse(
            _sse(state, job), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    return await _whole(state, request, job)


async def _whole(state: ServeState, request: Request, job: _Job) -> Response:
    """Not streaming: the engine keeps the text on the request and sends only the finish."""
    req = job.req
    watcher = asyncio.create_task(_cancel_on_disconnect(request, state, req))
    try:
        kind, payload = await job.events.get()
    except asyncio.CancelledError:
        state.engine.cancel(req)
        state.record(req, job.endpoint, 499, "cancelled")
        raise
    finally:
        watcher.cancel()
    if kind == "error":
        failure: Failure = payload
        state.record(req, job.endpoint, failure.status, "error")
        failed = ApiError(failure.status, failure.message, type_="server_error", code=failure.code)
        failed.logged = True
        raise failed
    if payload == "cancelled":
        state.record(req, job.endpoint, 499, "cancelled")
        return Response(status_code=499)
    state.record(req, job.endpoint, 200, payload)
    text, calls = _answer(state, job)
    logprobs = req.logprobs if req.sampling.logprobs is not None else None
    return JSONResponse(
        wire.completion(
            job.rid,
            job.created,
            req.model,
            text,
            payload,
            job.usage(),
            chat=job.chat,
            tool_calls=calls,
            logprobs=logprobs,
        )
    )


def _answer(state: ServeState, job: _Job) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text and, when the request gave tools, the calls read out of it."""
    if not job.tools:
        return job.req.text, []
    from mlxtune.serve.tools import extract_tool_calls

    return extract_tool_calls(job.req.text, state.models[job.req.model].tokenizer, job.tools)


async def _batch(
    state: ServeState,
    request: Request,
    body: CompletionBody,
    name: str,
    prompts: list[list[int]],
    max_tokens: int,
) -> Response:
    """A list of completion prompts: one choice each, generated side by side."""
    jobs = [
        _submit(
            state,
            body,
            name,
            p,
            max_tokens,
            chat=False,
            logprobs=body.logprobs,
            **await _constrain(state, body, name, max_tokens),  # a fresh constraint per prompt
        )
        for p in prompts
    ]
    responses = await asyncio.gather(*(_whole(state, request, j) for j in jobs))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for i, (job, response) in enumerate(zip(jobs, responses, strict=True)):
        if response.status_code != 200:
            return response
        one = json.loads(bytes(response.body))["choices"][0]
        choices.append({**one, "index": i})
        prompt_tokens += len(job.req.prompt)
        completion_tokens += job.req.completion_tokens
    usage = wire.usage(prompt_tokens, completion_tokens)
    return JSONResponse(
        wire.completion(
            jobs[0].rid, jobs[0].created, name, "", "stop", usage, chat=False, choices=choices
        )
    )


async def _cancel_on_disconnect(request: Request, state: ServeState, req: GenRequest) -> None:
    """Wait for the client to hang up (the body is already read, so the next ASGI message is
    the disconnect), then cancel the generation: a waiting request leaves the queue at once."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    state.engine.cancel(req)


async def _sse(state: ServeState, job: _Job) -> AsyncIterator[bytes]:
    """OpenAI chunks as server-sent events: pieces, a last chunk with usage, `[DONE]`."""
    req, chat = job.req, job.chat

    def chunk(text: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return wire.chunk(job.rid, job.created, req.model, text, finish, chat=chat, **extra)

    def piece(text: str | None, finish: str | None = None, **extra: Any) -> bytes:
        if text and finish is None and not any(extra.values()):  # the per-token case
            return text_chunk(text)
        return sse_bytes(chunk(text, finish, **extra))

    text_chunk = TextChunks(chunk)

    status, finish_reason = 499, "cancelled"
    logprobs: list[dict[str, Any]] = []
    try:
        if chat:
            yield piece("", role=True)
        ended = False
        while not ended:
            # Whatever is ready goes out as one write: the text that piled up as one chunk.
            out, text = [], ""
            for kind, payload in await take_ready(job.events):
                if kind == "logprobs":
                    logprobs += payload
                    continue
                if kind == "text":
                    text += payload
                    continue
                if text:
                    out.append(piece(text, logprobs=logprobs))
                    text, logprobs = "", []
                ended = True
                if kind == "done":
                    finish_reason = payload
                    if payload != "cancelled":
                        if job.tools:  # not streamed as it came: the answer, then its calls
                            answer, calls = _answer(state, job)
                            if calls:
                                finish_reason = "tool_calls"
                            out.append(
                                piece(answer or None, tool_calls=calls, logprobs=req.logprobs)
                            )
                        out.append(piece(None, finish_reason, usage=job.usage()))
                        if job.include_usage:
                            out.append(piece(None, usage=job.usage(), no_choices=True))
                        out.append(sse_bytes("[DONE]"))
                        status = 200
                else:  # a Failure: an error event, then the stream ends
                    error = wire.error_body(payload.message, "server_error", code=payload.code)
                    out.append(sse_bytes(error))
                    status, finish_reason = payload.status, "error"
                break
            if text:
                out.append(piece(text, logprobs=logprobs))
                logprobs = []
            if out:
                yield b"".join(out)
    finally:
        if status != 200:
            state.engine.cancel(req)
        state.record(req, job.endpoint, status, finish_reason)
