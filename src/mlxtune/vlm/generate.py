"""The one way a vision-language model answers: greedy, from chat messages and images, through
the prompt renderer (`formats.encode_prompt`) and the model's own image processor, decoded by
mlx-vlm. `evaluate` and `serve` both call `generate_vlm`, so for the same messages and image
they answer the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxtune import formats
from mlxtune.vlm.data import with_image_parts
from mlxtune.vlm.load import text_tokenizer


@dataclass
class VisionAnswer:
    text: str
    prompt_ids: list[int]  # image placeholders expanded
    tokens: list[int]  # generated, without the end-of-sequence token
    finish_reason: str  # "stop" (end of sequence) or "length"


def vision_prompt(processor: Any, messages: formats.Messages, images: list[Any]) -> dict[str, Any]:
    """Prompt ids (each image placeholder expanded to its tokens) and the images' pixels, as
    training encodes them (`vlm.train`)."""
    import numpy as np

    from mlxtune.vlm.train import expand_image_tokens, image_token_counts

    tokenizer = text_tokenizer(processor)
    ids = formats.encode_prompt(tokenizer, with_image_parts(list(messages), len(images)))
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


def generate_vlm(
    model: Any,
    processor: Any,
    messages: formats.Messages,
    images: list[Any],
    max_tokens: int,
) -> VisionAnswer:
    """Greedy answer to `messages` about `images` (PIL images, in order of appearance)."""
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step

    prompt = vision_prompt(processor, messages, images)
    ids = prompt["input_ids"]
    extra: dict[str, Any] = {}
    pixels = None
    if "pixel_values" in prompt:
        pixels = mx.array(prompt["pixel_values"])
        extra["image_grid_thw"] = mx.array(prompt["image_grid_thw"])
    eos = set(text_tokenizer(processor).eos_token_ids)
    tokens: list[int] = []
    finish = "length"
    steps = generate_step(
        mx.array([ids]), model, pixels, None, max_tokens=max_tokens, temperature=0.0, **extra
    )
    for token, _ in steps:
        t = int(token)
        if t in eos:
            finish = "stop"
            break
        tokens.append(t)
        if len(tokens) >= max_tokens:
            break
    text = processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return VisionAnswer(text, ids, tokens, finish)
