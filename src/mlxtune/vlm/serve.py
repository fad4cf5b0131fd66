"""Serving a vision-language model: chat requests with `image_url` parts, answered by
`vlm.generate.generate_vlm` (evaluate's function, so the served answer to an image is
evaluate's answer to it, token for token).

Images come only as base64 `data:` URIs: a remote URL or a server-side path is refused with
400 (the server never fetches or reads files for a client). mlx-vlm has no batching here, so
requests are answered one at a time on one worker thread, greedily; a streamed request gets
its whole answer as one chunk, then the finish chunk and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
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


async def vision_chat(state: ServeState, body: ChatBody, name: str, max_tokens: int) -> Response:
    """Answer a chat request with a vision-language model (with or without images)."""
    from mlxtune.vlm.generate import generate_vlm

    loaded = state.models[name]
    urls = body.image_urls()
    images = [decode_image_url(u, f"messages.image_url[{i}]") for i, u in enumerate(urls)]
    messages = [m.as_message() for m in body.messages]
    req = GenRequest(model=name, prompt=[], max_tokens=max_tokens, images=len(images))
    loop = asyncio.get_running_loop()
    try:
        answer = await loop.run_in_executor(
            _worker(), generate_vlm, loaded.model, loaded.processor, messages, images, max_tokens
        )
    except Exception as e:  # a template that rejects the conversation, or a model failure
        state.record(req, "chat", 500, "error")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        failed = ApiError(500, f"generation failed: {first}", type_="server_error")
        failed.logged = True
        raise failed from None
    req.prompt, req.completion_tokens = answer.prompt_ids, len(answer.tokens)
    req.first_token_at = time.perf_counter()
    state.record(req, "chat", 200, answer.finish_reason)
    rid, created = wire.new_id(True), int(time.time())
    usage = wire.usage(len(answer.prompt_ids), len(answer.tokens))
    if not body.stream:
        return JSONResponse(
            wire.completion(rid, created, name, answer.text, answer.finish_reason, usage, chat=True)
        )

    async def events() -> AsyncIterator[bytes]:
        for chunk in (
            wire.chunk(rid, created, name, "", chat=True, role=True),
            wire.chunk(rid, created, name, answer.text, chat=True),
            wire.chunk(rid, created, name, None, answer.finish_reason, chat=True, usage=usage),
        ):
            yield format_sse_event(data_str=json.dumps(chunk))
        yield format_sse_event(data_str="[DONE]")

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache"})
