"""Which kind of model a config names (text or vision-language), and the `vlm` extra's check.

Nothing here imports mlx-vlm at module level: text-only use never loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlxtune.errors import UsageError

if TYPE_CHECKING:
    from mlxtune.config import ModelConfig

Kind = Literal["text", "vlm"]
INSTALL_HINT = "pip install 'mlxtune[vlm]'"


def detect_kind(path: str | Path) -> Kind:
    """'vlm' when the model's config.json carries a `vision_config`, else 'text'. A hub id or a
    missing config reads as text (the text loader reports what is wrong with it)."""
    config = Path(path) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "text"
    return "vlm" if isinstance(data, dict) and "vision_config" in data else "text"


def model_kind(model_cfg: ModelConfig) -> Kind:
    """`model.kind` when set, else detected from the model's config."""
    kind = getattr(model_cfg, "kind", "auto")
    if kind in ("text", "vlm"):
        return kind  # type: ignore[return-value]
    return detect_kind(model_cfg.path)


def require_mlx_vlm() -> None:
    """Fail with the install command when the `vlm` extra is missing."""
    import importlib.util

    if importlib.util.find_spec("mlx_vlm") is None:
        raise UsageError(f"this is a vision-language model and needs mlx-vlm: {INSTALL_HINT}")
