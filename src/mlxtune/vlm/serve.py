"""Serving a vision-language model: chat requests with `image_url` parts, answered by
`vlm.generate.generate_vlm` (evaluate's function, so the served answer to an image is
evaluate's answer to it, token for token).

Images come only as base64 `data:` URIs: a remote URL or a server-side path is refused with
400 (the server never fetches or reads files for a client). mlx-vlm has no batching here, so
requests are answered one at a time on one worker thread, with the request's sampling, stop
strings and logprobs; a streamed request gets its answer piece by piece as it is generated.
`tools` and a constraining `response_format` are refused with 400 (not applied here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event

from mlxtune.errors import MlxtuneError
from mlxtune.serve import wire
from mlxtune.serve.engine import GenRequest, LoadedModel
from mlxtune.serve.wire import ApiError, ChatBody
from mlxtune.vlm.data import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.serve.state import ServeState
    from mlxtune.vlm.generate import VisionAnswer


def load_vision_models(cfg: Config) -> dict[str, LoadedModel]:
    """The base VLM plus every configured adapter, each loaded whole by mlx-vlm (adapters do
    not share the base's weights yet)."""
    import mlx.core as mx

    from mlxtune.io import sha256_file
    from mlxtune.serve.models import resolve_adapters
    from mlxtune.vlm.load import load_vlm, text_tokenizer

    def loaded(name: str, adapter: Any = None) -> LoadedModel:
        model, processor, _ = load_vlm(cfg.model, adapter)
        mx.eval(model.parameters())  # here: the worker thread cannot evaluate our lazy arrays
        if adapter is None:
            return LoadedModel(name, model, text_tokenizer(processor), processor=processor)
        ref = str(cfg.serve.adapters[name])
        alias = ref.removeprefix("@") if ref.startswith("@") else None
        fingerprint = sha256_file(adapter / "adapters.safetensors")
        tok = text_tokenizer(processor)
        return LoadedModel(name, model, tok, str(adapter), fingerprint, alias, processor)

    models = {cfg.serve.base_name: loaded(cfg.serve.base_name)}
    for name, path in resolve_adapters(cfg).items():
        try:
            models[name] = loaded(name, path)
        except MlxtuneError as e:
            raise MlxtuneError(f"serve.adapters.{name}: {e}") from None
    return models


def decode_image_url(url: str, where: str) -> Any:
    """A `data:image/...;base64,...` URI -> a decoded PIL image; anything else is a 400."""
    from PIL import Image, UnidentifiedImageError

    if url.startswith(("http://", "https://")):
        raise ApiError(
            400, f"{where}: remote image URLs are not fetched; send the image as a base64 "
            "data: URI", param=where, code="invalid_image_url",
        )  # fmt: skip
    header, comma, payload = url.partition(",")
    if not (header.startswith("data:") and header.endswith(";base64") and comma):
        raise ApiError(
            400, f"{where}: only base64 data: URIs are accepted (data:image/png;base64,...); "
            "server-side paths are never read", param=where, code="invalid_image_url",
        )  # fmt: skip
    try:
        data = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
        raise ApiError(
            400, f"{where}: cannot read image ({type(e).__name__})", param=where,
            code="invalid_image",
        ) from None  # fmt: skip
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE or max(width, height) > MAX_IMAGE_SIDE:
        raise ApiError(
            400, f"{where}: image is {width}x{height}; sides must be "
            f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels", param=where, code="invalid_image",
        )  # fmt: skip
    return image


def refuse_images_to_text_model(body: ChatBody, loaded: LoadedModel) -> None:
    if loaded.processor is None and body.image_urls():
        raise ApiError(
            400, f"model {loaded.name!r} is a text model and takes no image_url parts",
            param="messages", code="images_not_supported",
        )  # fmt: skip


@cache
def _worker() -> ThreadPoolExecutor:
    """One thread answers every vision request, in turn (mlx-vlm is not batched here)."""
    return ThreadPoolExecutor(1, thread_name_prefix="mlxtune-vision")


def refuse_what_vision_cannot_honour(body: ChatBody, loaded: LoadedModel) -> None:
    """A 400 naming a field the vision path does not apply, never a silent drop."""
    from mlxtune.structured import ResponseFormatError, parse_response_format

    if body.tools_in_use():
        raise ApiError(
            400, "tools: not supported for vision-language models", param="tools",
            code="unsupported_parameter",
        )  # fmt: skip
    try:
        constrained = parse_response_format(body.response_format) is not None
    except ResponseFormatError:  # an invalid one is refused all the same
        constrained = True
    if constrained:
        raise ApiError(
            400, "response_format: constrained decoding is not supported for vision-language "
            "models", param="response_format", code="unsupported_parameter",
        )  # fmt: skip
    vocab = len(loaded.processor.tokenizer)
    if body.logit_bias and any(int(t) >= vocab for t in body.logit_bias):
        raise ApiError(400, f"logit_bias: token ids must be below {vocab}", param="logit_bias")


async def vision_chat(state: ServeState, body: ChatBody, name: str, max_tokens: int) -> Response:
    """Answer a chat request with a vision-language model (with or without images): sampling,
    stop strings and logprobs as for text models, streamed token by token when asked."""
    from mlxtune.vlm.generate import generate_vlm

    loaded = state.models[name]
    refuse_what_vision_cannot_honour(body, loaded)
    urls = body.image_urls()
    images = [decode_image_url(u, f"messages.image_url[{i}]") for i, u in enumerate(urls)]
    messages = [m.as_message() for m in body.messages]
    sampling = body.sampling(body.logprobs_wanted())
    req = GenRequest(
        model=name, prompt=[], max_tokens=max_tokens, sampling=sampling, stop=body.stops(),
        stream=body.stream, images=len(images),
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def on_text(piece: str, logprobs: list[dict[str, Any]]) -> None:  # on the worker thread
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        loop.call_soon_threadsafe(pieces.put_nowait, ("text", (piece, logprobs)))

    def answer() -> VisionAnswer:
        return generate_vlm(
            loaded.model, loaded.processor, messages, images, max_tokens, sampling=sampling,
            stop=req.stop, template_kwargs=body.chat_template_kwargs,
            on_text=on_text if body.stream else None, cancel=cancel,
        )  # fmt: skip

    def finished(answer: VisionAnswer) -> None:
        req.prompt, req.completion_tokens = answer.prompt_ids, len(answer.tokens)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()

    future = loop.run_in_executor(_worker(), answer)
    rid, created = wire.new_id(True), int(time.time())
    if not body.stream:
        try:
            done = await future
        except asyncio.CancelledError:
            cancel.set()
            state.record(req, "chat", 499, "cancelled")
            raise
        except Exception as e:  # a template that rejects the conversation, or a model failure
            raise _failed(state, req, e) from None
        finished(done)
        state.record(req, "chat", 200, done.finish_reason)
        usage = wire.usage(len(done.prompt_ids), len(done.tokens))
        logprobs = done.logprobs if sampling.logprobs is not None else None
        return JSONResponse(
            wire.completion(
                rid, created, name, done.text, done.finish_reason, usage, chat=True,
                logprobs=logprobs,
            )
        )  # fmt: skip
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, ("end", None)))

    def chunk(text: str | None, finish: str | None = None, **extra: Any) -> bytes:
        payload = wire.chunk(rid, created, name, text, finish, chat=True, **extra)
        return format_sse_event(data_str=json.dumps(payload))

    async def events() -> AsyncIterator[bytes]:
        status, finish = 499, "cancelled"
        try:
            yield chunk("", role=True)
            while (item := await pieces.get())[0] == "text":
                piece, logprobs = item[1]
                yield chunk(piece, logprobs=logprobs)
            try:
                done = future.result()
            except Exception as e:  # as when not streaming: an error event ends the stream
                status, finish = 500, "error"
                body_ = wire.error_body(_failure_message(e), "server_error")
                yield format_sse_event(data_str=json.dumps(body_))
                return
            finished(done)
            status, finish = 200, done.finish_reason
            usage = wire.usage(len(done.prompt_ids), len(done.tokens))
            yield chunk(None, done.finish_reason, usage=usage)
            if body.include_usage:
                yield chunk(None, usage=usage, no_choices=True)
            yield format_sse_event(data_str="[DONE]")
        finally:
            if status != 200:
                cancel.set()
            state.record(req, "chat", status, finish)

    return EventSourceResponse(
        events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _failure_message(e: Exception) -> str:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"generation failed: {first}"


def _failed(state: ServeState, req: GenRequest, e: Exception) -> ApiError:
    state.record(req, "chat", 500, "error")
    failed = ApiError(500, _failure_message(e), type_="server_error")
    failed.logged = True
    return failed
