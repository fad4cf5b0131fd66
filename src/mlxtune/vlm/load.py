"""Loading a vision-language model (and optionally an adapter) through mlx-vlm: the VLM
counterpart of `modeling.load_model`, which hands VLM configs here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import UsageError
from mlxtune.formats import resolve_template
from mlxtune.vlm.kind import require_mlx_vlm

if TYPE_CHECKING:
    from mlxtune.config import ModelConfig

# mlx-vlm falls back to a hub download when one of these is missing, and its processor then
# fails with an unrelated message; name the missing file instead.
PROCESSOR_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def load_vlm(model_cfg: ModelConfig, adapter: Path | str | None = None) -> tuple[Any, Any, str]:
    """(model, processor, chat template in use). The template is installed on the processor's
    tokenizer, so `formats.render(processor.tokenizer, ...)` renders with it."""
    from mlxtune.runtime import long_lived

    with long_lived():
        return _load_vlm(model_cfg, adapter)


def _load_vlm(model_cfg: ModelConfig, adapter: Path | str | None) -> tuple[Any, Any, str]:
    require_mlx_vlm()
    from mlx_vlm.utils import load

    path = Path(model_cfg.path)
    if path.is_dir():
        missing = [f for f in PROCESSOR_FILES if not (path / f).is_file()]
        if missing:
            raise UsageError(f"model.path: {path} has no {', '.join(missing)}")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UsageError(f"{adapter}: not an adapter directory (no adapter_config.json)")
    try:
        model, processor = load(str(path), revision=model_cfg.revision)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise UsageError(f"model.path: cannot load {path} with mlx-vlm: {e}") from None
    if adapter is not None:
        apply_adapter(model, Path(adapter))
    model.eval()
    template = resolve_template(text_tokenizer(processor), model_cfg)
    return model, processor, template


def text_tokenizer(processor: Any) -> Any:
    """The processor's tokenizer as `formats` takes it (mlx-lm's wrapper around the HF one), so
    VLM prompts go through the same renderer as text prompts."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return TokenizerWrapper(processor.tokenizer)


def apply_adapter(model: Any, adapter: Path) -> None:
    """LoRA/DoRA through mlx-vlm's layers; a full fine-tune's weights replace the trained ones
    (only the language model was trained, so the load is not strict)."""
    import mlx.core as mx

    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("fine_tune_type") == "full":
        model.load_weights(str(adapter / "adapters.safetensors"), strict=False)
    else:
        from mlx_vlm.trainer.peft import apply_lora_layers

        apply_lora_layers(model, str(adapter))
    mx.eval(model.parameters())
