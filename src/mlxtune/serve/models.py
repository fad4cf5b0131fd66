"""Which models serve answers with: `serve.adapters` resolved to run directories, and the base
plus every adapter loaded at start (adapters share the base's frozen weights, or with
`serve.fuse_adapters` have their LoRA folded into their own copy of the layers it adapts; with
`serve.mix_adapters`, adapters that can share a batch decode in one with the base's requests)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError
from mlxtune.io import sha256_file
from mlxtune.serve.engine import LoadedModel

if TYPE_CHECKING:
    from mlxtune.config import Config


def resolve_adapters(cfg: Config) -> dict[str, Path]:
    """`serve.adapters` -> {name: adapter directory}. A value is anything `rundir.resolve_run`
    takes: an adapter/run directory, a run name under train.runs_dir, or "@ALIAS"."""
    from mlxtune.rundir import resolve_run

    out: dict[str, Path] = {}
    for name, ref in cfg.serve.adapters.items():
        if not name or name != name.strip() or "/" in name:
            raise MlxtuneError(f"serve.adapters: invalid adapter name {name!r}")
        if name == cfg.serve.base_name:
            raise MlxtuneError(f"serve.adapters.{name}: name clashes with serve.base_name")
        out[name] = resolve_run(ref, cfg, field=f"serve.adapters.{name}").root
    return out


def default_model_name(cfg: Config) -> str:
    if cfg.serve.default_model:
        return cfg.serve.default_model
    return next(iter(cfg.serve.adapters), cfg.serve.base_name)


def usage_db_path(cfg: Config, adapters: dict[str, Path]) -> Path:
    if cfg.serve.usage_db is not None:
        return cfg.serve.usage_db
    first = next(iter(adapters.values()), None)
    return (first if first is not None else cfg.train.runs_dir) / "usage.sqlite"


def share_base_weights(base: Any, adapted: Any, adapter_dir: Path) -> int:
    """Point the adapted model's frozen weights at the base model's arrays, so N adapters cost
    one base in memory. Weights stored in the adapter file (LoRA matrices, or whole layers of a
    full fine-tune) stay the adapter's own. Returns how many arrays are shared."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    stored: Any = mx.load(str(adapter_dir / "adapters.safetensors"))
    own = set(stored)
    base_params: dict[str, Any] = dict(tree_flatten(base.parameters()))
    adapted_params: list[tuple[str, Any]] = tree_flatten(adapted.parameters())  # type: ignore[assignment]
    shared = []
    for key, value in adapted_params:
        if key in own:
            continue
        base_key = key.replace(".linear.", ".")
        twin = base_params.get(base_key)
        if twin is not None and twin.shape == value.shape and twin.dtype == value.dtype:
            shared.append((key, twin))
    adapted.update(tree_unflatten(shared))
    # Evaluate here: lazy arrays made on this thread's stream cannot be evaluated by the worker.
    mx.eval(adapted.parameters())
    return len(shared)


def fuse_lora(model: Any) -> int:
    """Replace each LoRA layer over a full-precision Linear by one Linear holding
    W + scale * (A B)^T: the same function in one matmul instead of three (mlx-lm's own
    `fuse`). Quantized layers stay LoRA: requantizing would change the answers. Returns how
    many layers were fused."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.lora import LoRALinear

    fused = [
        (name, module.fuse())
        for name, module in model.named_modules()
        if type(module) is LoRALinear and type(module.linear) is nn.Linear
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
        mx.eval(model.parameters())  # on this thread's stream, as share_base_weights does
    return len(fused)


def load_models(cfg: Config) -> dict[str, LoadedModel]:
    """Base plus every configured adapter; any failure is a one-line MlxtuneError."""
    import mlx.core as mx

    from mlxtune.modeling import load_model
    from mlxtune.vlm.kind import model_kind

    if model_kind(cfg.model) == "vlm":
        from mlxtune.vlm.serve import load_vision_models

        return load_vision_models(cfg)
    adapters = resolve_adapters(cfg)
    base_model, base_tok, _ = load_model(cfg.model)
    mx.eval(base_model.parameters())
    models = {cfg.serve.base_name: LoadedModel(cfg.serve.base_name, base_model, base_tok)}
    for name, path in adapters.items():
        models[name] = load_adapter(cfg, name, path, base_model, fuse=not cfg.serve.mix_adapters)
    return mix_and_fuse(cfg, models, adapters)


def mix_and_fuse(
    cfg: Config, models: dict[str, LoadedModel], fresh: Iterable[str]
) -> dict[str, LoadedModel]:
    """Where each model decodes. With `serve.mix_adapters`, the base and the largest group of
    two or more adapters that can share a batch (plain LoRA, same layers and rank) decode in one
    mixed batch; another such group gets a mixed batch of its own. Adapters in `fresh` (loaded
    unfused for this) that mix in no batch are then fused as `serve.fuse_adapters` says.
    Returns every model, a new LoadedModel where its batch changed (for `Engine.swap`)."""
    from mlxtune.serve.multi_lora import BASE_INDEX, MixMember, build_mixed, group_adapters

    base_name = cfg.serve.base_name
    members: dict[str, MixMember] = {}
    if cfg.serve.mix_adapters:
        adapters = {n: Path(m.adapter) for n, m in models.items() if m.adapter}
        try:
            groups = group_adapters(models[base_name].model, adapters)
            mixed_models = [build_mixed(models[base_name].model, group) for group in groups]
        except Exception as e:  # files that loaded a moment ago; a bug in mixing, say so
            raise MlxtuneError(f"serve.mix_adapters: cannot mix the adapters: {e}") from e
        for i, (group, mixed) in enumerate(zip(groups, mixed_models, strict=True)):
            members.update((n, MixMember(mixed, mixed.index(n))) for n in group)
            if i == 0:
                members[base_name] = MixMember(mixed, BASE_INDEX)
    out = {
        name: m if m.mixed is None and name not in members else replace(m, mixed=members.get(name))
        for name, m in models.items()
    }
    for name in fresh:
        if out[name].mixed is None and cfg.serve.fuse_adapters:
            fuse_lora(out[name].model)
    return out


def load_adapter(
    cfg: Config, name: str, path: Path, base_model: Any, *, fuse: bool = True
) -> LoadedModel:
    """One adapter over the base's shared weights; folded in when `fuse` and
    `serve.fuse_adapters` both say so."""
    from mlxtune.modeling import load_model

    try:
        model, tok, _ = load_model(cfg.model, path)
        share_base_weights(base_model, model, path)
        if fuse and cfg.serve.fuse_adapters:
            fuse_lora(model)
    except MlxtuneError as e:
        raise MlxtuneError(f"serve.adapters.{name}: {e}") from None
    except Exception as e:  # mlx-lm raises plain errors for mismatched adapters
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MlxtuneError(f"serve.adapters.{name}: cannot load {path}: {first}") from None
    ref = str(cfg.serve.adapters[name])
    alias = ref.removeprefix("@") if ref.startswith("@") else None
    fingerprint = sha256_file(path / "adapters.safetensors")
    return LoadedModel(name, model, tok, str(path), fingerprint, alias)
