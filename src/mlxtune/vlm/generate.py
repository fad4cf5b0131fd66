"""The one way a vision-language model answers: from chat messages and images, through the
prompt renderer (`formats.encode_prompt`) and the model's own image processor, decoded by
mlx-vlm. `evaluate` and `serve` both call `generate_vlm`, so for the same messages, image and
(greedy) sampling they answer the same tokens; serve adds sampling, stop strings and
streaming on top of the same loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlxtune import formats
from mlxtune.vlm.data import with_image_parts
from mlxtune.vlm.load import text_tokenizer

if TYPE_CHECKING:
    from mlxtune.serve.sampling import Sampling


@dataclass
class VisionAnswer:
    text: str
    prompt_ids: list[int]  # image placeholders expanded
    tokens: list[int]  # generated, without the end-of-sequence token
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # when sampling.logprobs


def vision_prompt(
    processor: Any,
    messages: formats.Messages,
    images: list[Any],
    template_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prompt ids (each image placeholder expanded to its tokens) and the images' pixels, as
    training encodes them (`vlm.train`)."""
    import numpy as np

    from mlxtune.vlm.train import expand_image_tokens, image_token_counts

    tokenizer = text_tokenizer(processor)
    ids = formats.encode_prompt(
        tokenizer, with_image_parts(list(messages), len(images)), template_kwargs=template_kwargs
    )
    if not images:
        return {"input_ids": ids}
    out = processor.image_processor(images=[im.convert("RGB") for im in images])
    pixels = np.asarray(out["pixel_values"], np.float32)
    grid = np.asarray(out["image_grid_thw"])
    image_id = processor.tokenizer.convert_tokens_to_ids(_image_token(processor))
    ids, _ = expand_image_tokens(
        ids, [False] * len(ids), image_id, image_token_counts(processor, grid)
    )
    return {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid}


def _image_token(processor: Any) -> str:
    return str(getattr(processor, "image_token", None) or "<|image_pad|>")


class AnswerText:
    """The answer's text as tokens arrive. Whole, it is `decode(tokens).strip()` cut at the
    first stop string; `ready()` is the part of it no later token can change (trailing
    whitespace, a half-decoded character and a possible stop string's start are held back),
    so the streamed pieces add up to the whole answer."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self.decode = decode
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.stopped = False

    def update(self, tokens: list[int]) -> None:
        text = self.decode(tokens).lstrip()
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            text, self.stopped = text[: min(hits)], True
        self.text = text

    def ready(self) -> str:
        text = self.text if self.stopped else self.text[: len(self.text) - self.hold]
        return text.rstrip().rstrip("\ufffd")

    def final(self) -> str:
        return self.text.strip()


def generate_vlm(
    model: Any,
    processor: Any,
    messages: formats.Messages,
    images: list[Any],
    max_tokens: int,
    *,
    sampling: Sampling | None = None,
    stop: list[str] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    on_text: Callable[[str, list[dict[str, Any]]], None] | None = None,
    cancel: threading.Event | None = None,
) -> VisionAnswer:
    """The answer to `messages` about `images` (PIL images, in order of appearance): greedy
    unless `sampling` says otherwise (serve's Sampling: temperature, top_p, top_k, min_p,
    seed, penalties, logit_bias, logprobs). `on_text(piece, logprobs)` hears the answer as it
    is generated (the pieces add up to `text`); setting `cancel` stops it early."""
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step

    from mlxtune.serve.sampling import GREEDY_BELOW, make_processors, make_sampler, token_logprob

    prompt = vision_prompt(processor, messages, images, template_kwargs)
    ids = prompt["input_ids"]
    extra: dict[str, Any] = {}
    pixels = None
    if "pixel_values" in prompt:
        pixels = mx.array(prompt["pixel_values"])
        extra["image_grid_thw"] = mx.array(prompt["image_grid_thw"])
    if sampling is not None:
        greedy = sampling.temperature < GREEDY_BELOW or sampling.top_p < GREEDY_BELOW
        if not greedy:  # else mlx-vlm's own argmax, exactly as evaluate decodes
            extra["sampler"] = make_sampler(sampling)
        extra["logits_processors"] = make_processors(sampling)
    top = sampling.logprobs if sampling is not None else None
    eos = set(text_tokenizer(processor).eos_token_ids)

    def decode(tokens: list[int]) -> str:
        return str(processor.tokenizer.decode(tokens, skip_special_tokens=True))

    answer = AnswerText(decode, stop or [])
    tokens: list[int] = []
    logprobs: list[dict[str, Any]] = []
    sent, logprobs_sent = "", 0
    finish = "length"
    steps = generate_step(
        mx.array([ids]), model, pixels, None, max_tokens=max_tokens, temperature=0.0, **extra
    )
    for token, token_logprobs in steps:
        t = int(token)
        if t in eos:
            finish = "stop"
            break
        tokens.append(t)
        if top is not None:
            logprobs.append(token_logprob(t, token_logprobs, top, lambda i: decode([i])))
        if on_text is not None or answer.stops:
            answer.update(tokens)
            if answer.stopped:
                finish = "stop"
                break
        if on_text is not None and (ready := answer.ready()).startswith(sent) and ready != sent:
            on_text(ready[len(sent) :], logprobs[logprobs_sent:])
            sent, logprobs_sent = ready, len(logprobs)
        if len(tokens) >= max_tokens or (cancel is not None and cancel.is_set()):
            break
    if not answer.stops:
        answer.update(tokens)
    text = answer.final()
    if on_text is not None and text.startswith(sent) and text != sent:
        on_text(text[len(sent) :], logprobs[logprobs_sent:])
    return VisionAnswer(text, ids, tokens, finish, logprobs)
