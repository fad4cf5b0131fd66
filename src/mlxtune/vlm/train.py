"""Training a vision-language model: the VLM counterpart of `train.plan`, plus the loop's step.

The run is the text run's: `train.run` takes this plan, `train_loop` runs `VisionTrainStep`
instead of the text step, and `RunWriter` writes the same run directory (config snapshot,
metrics.jsonl, checkpoints, best/, adapter). LoRA (or full) goes on the language model through
mlx-vlm's layers; the vision tower stays frozen. Images are encoded once, up front, by the
model's own processor (a tiny model's images are a few KB of pixels each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlxtune.config import Config
from mlxtune.errors import ConfigError, DataError
from mlxtune.formats import encode_for_training, read_records
from mlxtune.train.data import Batches, Example, collate
from mlxtune.train.loop import TrainStep
from mlxtune.train.plan import (
    PlannedRun,
    _data_problems,
    check_before_loading,
    lora_parameters,
    plan_batches,
)
from mlxtune.vlm.data import resolve_record_images, with_image_parts
from mlxtune.vlm.load import text_tokenizer


@dataclass
class VisionExample(Example):
    """Tokens (image placeholders expanded to the image's token count) plus its pixels."""

    pixel_values: np.ndarray | None = None  # (patches, patch_dim) for every image, in order
    image_grid_thw: np.ndarray | None = None  # (images, 3)


def open_images(paths: list[Path]) -> list[Any]:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def encode_images(processor: Any, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values, image_grid_thw) from the model's own image processor."""
    out = processor.image_processor(images=open_images(paths))
    return np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"])


def image_token_counts(processor: Any, grid_thw: np.ndarray) -> list[int]:
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    return [int(np.prod(g)) // (merge * merge) for g in grid_thw]


def expand_image_tokens(
    tokens: list[int], mask: list[bool], image_id: int, counts: list[int]
) -> tuple[list[int], list[bool]]:
    """Each image placeholder token -> as many as the image has tokens (never trained on)."""
    out_t: list[int] = []
    out_m: list[bool] = []
    k = 0
    for t, m in zip(tokens, mask, strict=True):
        if t == image_id and k < len(counts):
            out_t += [t] * counts[k]
            out_m += [False] * counts[k]
            k += 1
        else:
            out_t.append(t)
            out_m.append(m)
    if k != len(counts):
        raise DataError(
            f"the chat template rendered {k} image placeholders for {len(counts)} images"
        )
    return out_t, out_m


def encode_record(
    processor: Any, image_id: int, record: dict[str, Any], base: Path, *, mask_prompt: bool
) -> VisionExample:
    paths = resolve_record_images(record, base)
    messages = with_image_parts(record["messages"], len(paths))
    tokens, mask = encode_for_training(
        text_tokenizer(processor), {**record, "messages": messages}, mask_prompt=mask_prompt
    )
    if not paths:
        return VisionExample(tokens, mask)
    pixels, grid = encode_images(processor, paths)
    tokens, mask = expand_image_tokens(tokens, mask, image_id, image_token_counts(processor, grid))
    return VisionExample(tokens, mask, pixels, grid)


def read_examples(
    path: Path, processor: Any, image_id: int, *, mask_prompt: bool, max_seq_length: int
) -> tuple[list[Example], int]:
    """Every record of a split as examples; a missing image names its file and line."""
    out: list[Example] = []
    truncated = 0
    for line, record in read_records(path):
        missing = [p for p in resolve_record_images(record, path.parent) if not p.is_file()]
        if missing:
            raise DataError(f"{path}:{line}: images: {missing[0]}: image not found")
        ex = encode_record(processor, image_id, record, path.parent, mask_prompt=mask_prompt)
        if len(ex.tokens) > max_seq_length + 1:
            truncated += 1  # images sit in the prompt, so only the answer's tail is cut
            ex.tokens, ex.mask = ex.tokens[: max_seq_length + 1], ex.mask[: max_seq_length + 1]
        out.append(ex)
    return out, truncated


def collate_vision(batch: list[Any]) -> tuple[dict[str, np.ndarray], Any, Any, int]:
    """Text collate plus the batch's pixels (images in row order, as the model merges them)."""
    inputs, targets, mask, real = collate(list(batch))
    with_images = [e for e in batch if e.pixel_values is not None]
    features: dict[str, np.ndarray] = {"input_ids": inputs}
    if with_images:
        features["pixel_values"] = np.concatenate([e.pixel_values for e in with_images])
        features["image_grid_thw"] = np.concatenate([e.image_grid_thw for e in with_images])
    return features, targets, mask, real


class VisionBatches(Batches):
    def arrays(self, idx: list[int]) -> Any:
        return collate_vision([self.examples[i] for i in idx])


class VisionTrainStep(TrainStep):
    """The text step, with pixels: not compiled, because mlx-vlm computes Qwen2-VL's rope
    positions on the host."""

    compiled = False
    trained_positions_only = False  # mlx-vlm's model returns logits only
    fills_short_batches = False  # its rows carry pixels; text filler rows would have none
    splits_batches = False  # one stream: uncompiled, with host work per batch

    def logits(self, model: Any, inputs: Any) -> Any:
        out = model(
            inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
        )
        return getattr(out, "logits", out)

    def collate(self, batch: list[Example]) -> Any:
        return collate_vision(batch)

    def to_device(self, batch: Any, split: bool = True) -> Any:
        import mlx.core as mx

        features, targets, mask, real = batch
        feats = {k: mx.array(v) for k, v in features.items()}
        return feats, mx.array(targets), mx.array(mask), real


def setup_vlm(cfg: Config) -> tuple[Any, Any, str]:
    """(model, processor, template): everything frozen, then LoRA/DoRA (mlx-vlm's layers) or the
    language model's last blocks unfrozen; the vision tower is never trained."""
    import mlx.core as mx
    from mlx_vlm.trainer.peft import linear_to_lora_layers

    from mlxtune.vlm.load import load_vlm

    t = cfg.train
    if t.quantize_bits:
        raise ConfigError("train.quantize_bits: not supported for vision-language models yet")
    model, processor, template = load_vlm(cfg.model)
    mx.random.seed(t.seed)
    model.freeze()
    language = model.language_model
    if t.method == "full":
        blocks = language.layers if t.num_layers == -1 else language.layers[-t.num_layers :]
        for block in blocks:
            block.unfreeze()
    else:
        try:
            linear_to_lora_layers(
                language, t.num_layers, lora_parameters(t), use_dora=t.method == "dora"
            )
        except ValueError as e:
            raise ConfigError(f"train.method: {e}") from None
    return model, processor, template


def plan_vlm(cfg: Config, world: Any, *, resume: Path | None, dry_run: bool) -> PlannedRun:
    """`train.plan.plan` for a vision-language model: the same checks, then images."""
    t = cfg.train
    rank, world_size = world.rank(), world.size()
    run, problems = check_before_loading(cfg, world_size, resume=resume, dry_run=dry_run)
    model, processor, template = setup_vlm(cfg)
    image_id = int(model.config.image_token_id)
    kw: dict[str, Any] = {"mask_prompt": t.mask_prompt, "max_seq_length": t.max_seq_length}
    split = {
        s: read_examples(cfg.data.dir / f"{s}.jsonl", processor, image_id, **kw)
        if (cfg.data.dir / f"{s}.jsonl").is_file()
        else ([], 0)
        for s in ("train", "valid")
    }
    (train_ex, truncated), (valid_ex, _) = split["train"], split["valid"]
    problems += _data_problems(
        cfg, train_ex, valid_ex, world_size, len(model.language_model.layers)
    )
    if problems and not dry_run:
        raise ConfigError(problems)
    batches = VisionBatches(train_ex, t.batch_size, seed=t.seed, rank=rank, world=world_size)
    return plan_batches(
        cfg,
        model,
        batches,
        valid_ex,
        run=run,
        template=template,
        world_size=world_size,
        train_examples=len(train_ex),
        truncated=truncated,
        problems=problems,
        step_type=VisionTrainStep,
    )
