"""Requests for different LoRA adapters of one base decoded in one batch (`serve.mix_adapters`).

A `MixedModel` is the base (its weights shared, not copied) with every Linear the adapters adapt
wrapped in a `MultiLoRALinear` that holds each member's A and B stacked: index 0 is the base
itself (no LoRA), 1.. the adapters. Each batch row picks its pair (`mx.gather_mm`, as MoE's
`SwitchLinear` picks experts).

Which adapter each row uses travels in the row's KV cache list as one more entry,
`AdapterRows`. mlx-lm's `BatchGenerator` merges, filters, extends, splits and extracts every
entry of that list whenever rows come and go (prefill batches joining the decode batch,
finished or removed rows leaving, a finished row's cache going to the prompt cache), so the
row -> adapter map follows the rows by the very path their KV follows: nothing reads the
generator's private batch state. `MixedModel.__call__` takes the entry off the list before the
base model sees it.

Only plain LoRA adapters over Linear or QuantizedLinear layers mix, and only with adapters that
adapt the same layers at the same rank (`signature`); the rest keep a batch of their own.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_INDEX = 0  # the row uses no adapter


class AdapterRows:
    """The adapter index of each row of a batch, kept as an mlx-lm cache entry so it is
    reordered with the batch's KV (the methods are mlx-lm's batch cache protocol)."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = list(rows)

    @classmethod
    def merge(cls, caches: list[AdapterRows]) -> AdapterRows:
        return cls([i for c in caches for i in c.rows])

    def extract(self, idx: int) -> AdapterRows:
        return AdapterRows([self.rows[idx]])

    def filter(self, batch_indices: Any) -> None:
        keep = batch_indices.tolist() if hasattr(batch_indices, "tolist") else batch_indices
        self.rows = [self.rows[i] for i in keep]

    def extend(self, other: AdapterRows) -> None:
        self.rows += other.rows

    def prepare(self, **_: Any) -> None:  # padding concerns the KV entries only
        pass

    def finalize(self) -> None:
        pass

    @property
    def state(self) -> list[Any]:
        return []

    @property
    def nbytes(self) -> int:
        return 0

    def is_trimmable(self) -> bool:
        return True  # trimming tokens leaves the rows' adapters as they are

    def trim(self, n: int) -> int:
        return n

    def size(self) -> int:
        return 0

    def empty(self) -> bool:
        return not self.rows


class _Rows:
    """The current call's row -> adapter map, shared by every MultiLoRALinear of one model
    (set by `MixedModel.__call__`; only the engine's worker thread calls the model)."""

    def __init__(self, scales: list[float]) -> None:
        self.scales = [0.0, *scales]  # by index: LoRA's scale, one per adapter (same every layer)
        self.uniform: int | None = BASE_INDEX  # every row uses this adapter; None: mixed
        self.indices: Any = None  # mx.array (batch,) of adapter indices when mixed
        self.row_scales: Any = None  # mx.array (batch, 1, 1): each row's scale when mixed
        self.mixed_calls = 0  # forward passes whose rows used more than one adapter

    def set(self, rows: list[int]) -> None:
        import mlx.core as mx

        first = rows[0] if rows else BASE_INDEX
        if all(r == first for r in rows):
            self.uniform, self.indices = first, None
        else:
            self.uniform, self.indices = None, mx.array(rows, dtype=mx.uint32)
            self.row_scales = mx.array([self.scales[r] for r in rows])[:, None, None]
            self.mixed_calls += 1


@functools.cache
def multi_lora_linear() -> type:
    """The MultiLoRALinear layer class (made on first use: mlx is imported inside functions)."""
    import mlx.core as mx
    import mlx.nn as nn

    class MultiLoRALinear(nn.Module):
        """`linear(x) + scale[k] * (x @ A[k]) @ B[k]` with k the row's adapter (0: none)."""

        def __init__(self, linear: Any, a: list[Any], b: list[Any], rows: _Rows) -> None:
            super().__init__()
            self.linear = linear
            self.lora_a = a  # one (in, r) per adapter, as loaded: the uniform path's operands
            self.lora_b = b
            # index 0 (the base) is a zero pair: a mixed batch's base rows add exactly 0
            self.stacked_a = mx.stack([mx.zeros_like(a[0]), *a])
            self.stacked_b = mx.stack([mx.zeros_like(b[0]), *b])
            # plain attributes, outside the module tree (not parameters)
            object.__setattr__(self, "_rows", rows)

        def __call__(self, x: Any) -> Any:
            y = self.linear(x)
            k = self._rows.uniform
            if k == BASE_INDEX:
                return y
            if k is not None:  # mlx-lm's LoRALinear, operation for operation
                z = (x @ self.lora_a[k - 1]) @ self.lora_b[k - 1]
                return y + (self._rows.scales[k] * z).astype(x.dtype)
            idx = self._rows.indices
            h = mx.gather_mm(x, self.stacked_a, rhs_indices=idx)
            z = mx.gather_mm(h, self.stacked_b, rhs_indices=idx)
            return y + (self._rows.row_scales * z).astype(x.dtype)

    return MultiLoRALinear


class MixedModel:
    """The base with every member's LoRA on its layers; called by BatchGenerator as a model
    whose cache lists end with an `AdapterRows` entry (`cache_for`)."""

    def __init__(self, inner: Any, members: list[str], rows: _Rows) -> None:
        self.inner = inner
        self.members = members  # adapter names; member i has index i + 1
        self._rows = rows

    @property
    def mixed_calls(self) -> int:
        """Forward passes so far whose rows used more than one adapter (shows mixing happens)."""
        return self._rows.mixed_calls

    def index(self, name: str | None) -> int:
        return BASE_INDEX if name is None else self.members.index(name) + 1

    def cache_for(self, index: int, cache: list[Any] | None = None) -> list[Any]:
        """A row's cache list: its KV (fresh, or a prompt cache's copy) and its adapter."""
        from mlx_lm.models.cache import make_prompt_cache

        kv = make_prompt_cache(self.inner) if cache is None else cache[:-1]
        return [*kv, AdapterRows([index])]

    def make_cache(self) -> list[Any]:
        return self.cache_for(BASE_INDEX)

    def __call__(self, inputs: Any, cache: list[Any] | None = None, **kwargs: Any) -> Any:
        if not cache or not isinstance(cache[-1], AdapterRows):
            raise ValueError("a MixedModel needs cache lists made by cache_for()")
        self._rows.set(cache[-1].rows)
        return self.inner(inputs, cache=cache[:-1], **kwargs)


@dataclass(frozen=True)
class MixMember:
    """Where a served model decodes when mixed: its group's model and its row index there."""

    model: MixedModel
    index: int


@dataclass(frozen=True)
class AdapterLoRA:
    """One adapter's LoRA pairs as stored, keyed by the module path they adapt."""

    path: Path
    scale: float
    pairs: dict[str, tuple[Any, Any]]  # module path -> (A (in, r), B (r, out))

    def signature(self) -> tuple[Any, ...]:
        """Adapters with the same signature can share one batch: same layers, shapes, dtypes."""
        return tuple(
            (k, tuple(a.shape), tuple(b.shape), str(a.dtype), str(b.dtype))
            for k, (a, b) in sorted(self.pairs.items())
        )


def read_lora(path: Path, base: Any) -> AdapterLoRA | None:
    """The adapter's LoRA pairs when it is a plain LoRA over the base's (quantized) Linear
    layers as served; None for anything else (DoRA, full fine-tunes, QLoRA runs, LoRA on
    embeddings or experts)."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlxtune.modeling import base_quantization

    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("fine_tune_type", "lora") != "lora" or base_quantization(path) is not None:
        return None  # not LoRA, or LoRA trained over a base quantized at load (QLoRA), not this one
    scale = config.get("lora_parameters", {}).get("scale")
    if not isinstance(scale, int | float):
        return None
    weights: dict[str, Any] = mx.load(str(path / "adapters.safetensors"))  # type: ignore[assignment]
    modules = dict(base.named_modules())
    pairs: dict[str, tuple[Any, Any]] = {}
    for key in weights:
        module, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            return None
        if type(modules.get(module)) not in (nn.Linear, nn.QuantizedLinear):
            return None
        a, b = weights.get(f"{module}.lora_a"), weights.get(f"{module}.lora_b")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            return None
        pairs[module] = (a, b)
    return AdapterLoRA(path, float(scale), pairs) if pairs else None


def _clone_tree(x: Any) -> Any:
    """A copy of a module tree that shares every array (the weights) with the original."""
    import mlx.nn as nn

    if isinstance(x, nn.Module):
        twin = copy.copy(x)
        for key, value in x.items():
            twin[key] = _clone_tree(value)
        return twin
    if isinstance(x, list):
        return [_clone_tree(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_clone_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    return x


def build_mixed(base: Any, adapters: dict[str, AdapterLoRA]) -> MixedModel:
    """One MixedModel over `base` for adapters that share a signature (checked)."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    loras = list(adapters.values())
    if len({lora.signature() for lora in loras}) != 1:
        raise ValueError("adapters mixed in one batch must adapt the same layers at one rank")
    rows = _Rows([lora.scale for lora in loras])
    inner = _clone_tree(base)
    modules = dict(inner.named_modules())
    layer = multi_lora_linear()
    wrapped = [
        (
            key,
            layer(
                modules[key],
                [lora.pairs[key][0] for lora in loras],
                [lora.pairs[key][1] for lora in loras],
                rows,
            ),
        )
        for key in loras[0].pairs
    ]
    inner.update_modules(tree_unflatten(wrapped))
    # Evaluate here: lazy arrays made on this thread's stream cannot be evaluated by the worker.
    mx.eval(inner.parameters())
    return MixedModel(inner, list(adapters), rows)


def group_adapters(base: Any, adapters: dict[str, Path]) -> list[dict[str, AdapterLoRA]]:
    """The adapters that can share a batch, grouped by signature: only groups of two or more
    (one adapter alone keeps its own, fused, batch), largest first."""
    groups: dict[tuple[Any, ...], dict[str, AdapterLoRA]] = {}
    for name, path in adapters.items():
        lora = read_lora(path, base)
        if lora is not None:
            groups.setdefault(lora.signature(), {})[name] = lora
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)
