"""Evaluating a vision-language model: `evaluate` loads it with `vlm.load.load_vlm` and asks
this module for each side's answers, generated one example at a time by `generate_vlm` (the
function serve answers with). Scoring, the gate and the report are evaluate's own.
Loss and perplexity are not computed for VLMs yet (reported as "–").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import DataError
from mlxtune.vlm.data import resolve_record_images

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.evaluate import Example, Progress, SideOutput


def example_images(example: Example, split_file: Path) -> list[Any]:
    """The example's images, opened; a missing one names the split file's line."""
    from mlxtune.vlm.train import open_images

    paths = resolve_record_images(example.record, split_file.parent)
    for p in paths:
        if not p.is_file():
            raise DataError(f"{split_file}:{example.line}: images: {p}: image not found")
    return open_images(paths)


def run_vision_side(
    cfg: Config,
    model: Any,
    processor: Any,
    examples: list[Example],
    label: str,
    progress: Progress | None,
) -> SideOutput:
    """Greedy answers for every example (evaluate.batch_size does not apply: one at a time)."""
    from mlxtune.evaluate import SideOutput
    from mlxtune.vlm.generate import generate_vlm

    texts: list[str] = []
    generated = 0
    split_file = cfg.data.dir / f"{cfg.evaluate.split}.jsonl"
    t0 = time.perf_counter()
    for i, ex in enumerate(examples):
        images = example_images(ex, split_file)
        answer = generate_vlm(model, processor, ex.prompt, images, cfg.evaluate.max_tokens)
        texts.append(answer.text)
        generated += len(answer.tokens)
        if progress:
            progress(f"generate {label}", i + 1, len(examples))
    return SideOutput(texts, time.perf_counter() - t0, generated)
