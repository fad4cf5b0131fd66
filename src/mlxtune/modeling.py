"""Loading a base model (and optionally an adapter) the same way in every verb.

A QLoRA run (`train.quantize_bits`) was trained on a base quantized at load. Its
adapter_config.json records that quantization under `base_quantization`, and `load_model`
quantizes the base the same way before applying the adapter, so evaluate, serve, export and
verify run the model that was trained. Raw mlx-lm does not read that key, so such an adapter
also carries one marker tensor (`QLORA_MARKER`) that `mlx_lm.load(adapter_path=...)` refuses
with an error naming it, rather than silently running the adapter on a full-precision base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError, UsageError
from mlxtune.formats import resolve_template

if TYPE_CHECKING:
    from mlxtune.config import ModelConfig

QUANT_GROUP_SIZE = 64  # mlx's default group size, what QLoRA training uses
QLORA_MARKER = (
    "QLoRA adapter for a base quantized at load (see base_quantization in adapter_config.json): "
    "load it with mlxtune (evaluate, serve), or fuse it with mlxtune export"
)


def qlora_quantization(bits: int | None) -> dict[str, Any] | None:
    """The quantization `train.quantize_bits` applies to the base (None: none)."""
    if not bits:
        return None
    return {"bits": bits, "group_size": QUANT_GROUP_SIZE, "mode": "affine"}


def base_quantization(adapter: Path | str) -> dict[str, Any] | None:
    """The base quantization an adapter was trained on, from its adapter_config.json."""
    path = Path(adapter) / "adapter_config.json"
    try:
        value = json.loads(path.read_text()).get("base_quantization")
    except (OSError, ValueError, AttributeError):
        return None
    return dict(value) if isinstance(value, dict) else None


def quantize(model: Any, quantization: dict[str, Any]) -> None:
    """Quantize `model` in place; layers that are already quantized are left as they are."""
    import mlx.nn as nn

    nn.quantize(
        model,
        bits=int(quantization["bits"]),
        group_size=int(quantization["group_size"]),
        mode=str(quantization.get("mode", "affine")),
    )


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def local_model_dir(path: str) -> Path | None:
    """`model.path` as a local directory, or None for a hub id ("org/name"). A path that
    cannot be a hub id and is not a directory is a usage error naming how to build one."""
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists():
        raise UsageError(f"model.path: {path} is not a directory (build one: mlxtune tiny-model)")
    if local.is_absolute() or path.startswith(".") or len(local.parts) != 2:
        raise UsageError(f"model.path: {path}: not found (build one: mlxtune tiny-model --out DIR)")
    return None


def load_model(
    model_cfg: ModelConfig,
    adapter: Path | str | None = None,
    *,
    quantization: dict[str, Any] | None = None,
) -> tuple[Any, Any, str]:
    """(model, tokenizer, chat template in use). The template is installed on the tokenizer so
    every later `formats.render` call renders with it. `quantization` quantizes the base
    (training QLoRA); an adapter's recorded `base_quantization` does the same before the
    adapter is applied."""
    from mlxtune.runtime import long_lived

    with long_lived():
        return _load_model(model_cfg, adapter, quantization)


def _load_model(
    model_cfg: ModelConfig, adapter: Path | str | None, quantization: dict[str, Any] | None
) -> tuple[Any, Any, str]:
    from mlx_lm import load

    from mlxtune.vlm.kind import model_kind, require_mlx_vlm

    path = model_cfg.path
    if model_kind(model_cfg) == "vlm":
        require_mlx_vlm()  # the install command first, when the extra is missing
        raise UsageError(
            f"model.path: {path} is a vision-language model; this command supports text models "
            "only (see docs/vision.md for the verbs that take images)"
        )
    local_model_dir(path)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UsageError(f"{adapter}: not an adapter directory (no adapter_config.json)")
    if adapter is not None:
        quantization = base_quantization(adapter) or quantization
    # A quantized run's adapter goes on after the base is quantized, so mlx-lm loads the base only.
    via_mlx_lm = adapter is not None and quantization is None
    try:
        loaded = load(
            path,
            adapter_path=str(adapter) if via_mlx_lm else None,
            tokenizer_config={"trust_remote_code": model_cfg.trust_remote_code},
            revision=model_cfg.revision,
        )
        model, tokenizer = loaded[0], loaded[1]
    except Exception as e:  # hub, file and weight errors come in many types
        raise UsageError(f"model.path: cannot load {path} ({first_line(e)})") from None
    if quantization is not None:
        quantize(model, quantization)
        if adapter is not None:
            _apply_adapter(model, Path(adapter))
    template = resolve_template(tokenizer, model_cfg)
    return model, tokenizer, template


def _apply_adapter(model: Any, adapter: Path) -> None:
    """mlx-lm's `load_adapters`, without the QLoRA marker tensor it would refuse."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    config = json.loads((adapter / "adapter_config.json").read_text())
    kind = config.get("fine_tune_type", "lora")
    if kind != "full":
        linear_to_lora_layers(
            model, config["num_layers"], config["lora_parameters"], use_dora=kind == "dora"
        )
    weights: Any = mx.load(str(adapter / "adapters.safetensors"))
    weights.pop(QLORA_MARKER, None)
    params = dict(tree_flatten(model.parameters()))
    wrong = [k for k, w in weights.items() if k not in params or params[k].shape != w.shape]
    if wrong:
        names = ", ".join(wrong[:3])
        raise MlxtuneError(f"{adapter}: adapter tensors do not fit the model: {names}")
    model.load_weights(list(weights.items()), strict=False)
    model.eval()
