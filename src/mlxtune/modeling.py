"""Loading a base model (and optionally an adapter) the same way in every verb."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError
from mlxtune.formats import resolve_template

if TYPE_CHECKING:
    from mlxtune.config import ModelConfig


def load_model(model_cfg: ModelConfig, adapter: Path | str | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, chat template in use). The template is installed on the tokenizer so
    every later `formats.render` call renders with it."""
    from mlx_lm import load

    from mlxtune.vlm.kind import model_kind, require_mlx_vlm

    path = model_cfg.path
    if model_kind(model_cfg) == "vlm":
        require_mlx_vlm()  # the install command first, when the extra is missing
        raise MlxtuneError(
            f"model.path: {path} is a vision-language model; this command supports text models "
            "only (see docs/vision.md for the verbs that take images)"
        )
    local = Path(path)
    if (local.is_absolute() or path.startswith(".") or local.exists()) and not local.is_dir():
        raise MlxtuneError(f"model.path: {path} is not a directory (build one: mlxtune tiny-model)")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise MlxtuneError(f"{adapter}: not an adapter directory (no adapter_config.json)")
    try:
        loaded = load(
            path,
            adapter_path=str(adapter) if adapter else None,
            tokenizer_config={"trust_remote_code": model_cfg.trust_remote_code},
            revision=model_cfg.revision,
        )
        model, tokenizer = loaded[0], loaded[1]
    except FileNotFoundError as e:
        raise MlxtuneError(f"model.path: cannot load {path}: {e}") from None
    template = resolve_template(tokenizer, model_cfg)
    return model, tokenizer, template
