"""`mlxtune export` for a vision-language run: fuse the adapter into the language model with
mlx-vlm's own layers (`LoRALinear.fuse`, `DoRALinear.fuse`: mlx-vlm has no fuse command) and
save the whole model as mlx-vlm's `convert` does (`save_weights`, the base's processor and
config files, `save_config`), so `mlx_vlm.load(DIR)` loads it with no adapter. A full
fine-tune's weights are already in place after loading; there is nothing to fuse.
GGUF is refused: mlx-lm's writer takes text architectures only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config, ModelConfig
    from mlxtune.evaluate import Example
    from mlxtune.export import ExportResult
    from mlxtune.rundir import RunDir

# Files of the base model that are the model's description, not its weights (convert copies
# *.json and *.py; the tokenizer's and the chat template's own files go with them).
_SIDECAR_PATTERNS = ("*.json", "*.py", "*.jinja", "*.txt", "*.model", "*.tiktoken")


def export_vlm(
    cfg: Config,
    run: RunDir,
    name: str,
    model_cfg: ModelConfig,
    out: Path,
    *,
    dequantize: bool,
    gguf: bool,
) -> ExportResult:
    from mlx_vlm.quant_utils import dequantize_model
    from mlx_vlm.utils import get_model_path

    from mlxtune.export import ExportResult, fuse_adapters, test_examples
    from mlxtune.io import atomic_dir
    from mlxtune.vlm.load import load_vlm

    base = model_cfg.path
    if gguf:
        raise MlxtuneError(
            f"--gguf: {base} is a vision-language model; mlx-lm writes GGUF for text "
            "architectures only (export without --gguf)"
        )
    model, processor, _ = load_vlm(model_cfg, run.root)
    model_path = get_model_path(str(base), revision=model_cfg.revision)
    config = json.loads((model_path / "config.json").read_text())
    rounds = not dequantize and "quantization" in config
    split_file, questions = test_examples(cfg, run.read_run().get("data_dir")) if rounds else (
        cfg.data.dir / "test.jsonl", [],
    )  # fmt: skip
    reference = _answers(cfg, model, processor, split_file, questions)

    model, fused = fuse_adapters(model, config, dequantize_model if dequantize else None)
    fused_answers = _answers(cfg, model, processor, split_file, questions)
    same = sum(a == b for a, b in zip(reference, fused_answers, strict=True))

    with atomic_dir(out) as tmp:
        _save(tmp, model_path, model, config, run)
    return ExportResult(
        run=name,
        base_model=str(base),
        out=out,
        fused_layers=fused,
        dequantized=dequantize,
        gguf=None,
        agreement=(same, len(questions)) if rounds else None,
    )


def _save(tmp: Path, model_path: Path, model: Any, config: dict[str, Any], run: RunDir) -> None:
    from mlx_vlm.utils import save_config, save_weights

    for pattern in _SIDECAR_PATTERNS:
        for f in model_path.glob(pattern):
            if f.name != "model.safetensors.index.json":  # save_weights writes its own
                shutil.copy2(f, tmp / f.name)
    save_weights(tmp, model)
    save_config(config, tmp / "config.json")
    if run.chat_template.is_file():  # the exact template training rendered with
        shutil.copy2(run.chat_template, tmp / "chat_template.jinja")


def _answers(
    cfg: Config, model: Any, processor: Any, split_file: Path, examples: list[Example]
) -> list[str]:
    """Greedy answers, as evaluate gives them, to compare the model before and after fusing."""
    from mlxtune.vlm.evaluate import example_images
    from mlxtune.vlm.generate import generate_vlm

    answers = []
    for ex in examples:
        images = example_images(ex, split_file)
        answers.append(
            generate_vlm(model, processor, ex.prompt, images, cfg.evaluate.max_tokens).text
        )
    return answers
