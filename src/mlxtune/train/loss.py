"""The training loss: per-position cross-entropy, the same as `mlx.nn.losses.cross_entropy`.

On the CPU it carries its own gradient. MLX's `logsumexp` backward computes `exp(logits - lse)`
again, a second pass of exponentials over every trained position times the vocabulary, and
MLX's x86 CPU build computes exp in scalar code (about 25 ns each here). This version keeps the
forward's exponentials (`e`, in place of the logits, which it no longer needs) and its gradient
is `e / sum(e) - onehot`: one pass instead of two. Values agree with MLX's to float32 rounding
(tests/test_train_loss.py); the tiny bench model's step takes about 9% less time, and the peak
memory of the head and loss drops (docs/benchmarks.md, "Issue 18, quiet window 6").

Elsewhere (a GPU, where MLX's fused logsumexp is the faster, or logits below float32, whose
exponentials MLX accumulates in float32) it is MLX's own function.
"""

from __future__ import annotations

from functools import cache
from typing import Any


def cross_entropy(logits: Any, targets: Any) -> Any:
    """Cross-entropy at each position: `logits` (..., vocab), integer `targets` (...)."""
    import mlx.core as mx
    import mlx.nn as nn

    if logits.dtype == mx.float32 and mx.default_device().type == mx.cpu:
        return _saved_exponentials()(logits, targets)[0]
    return nn.losses.cross_entropy(logits, targets)


@cache
def _saved_exponentials() -> Any:
    """The custom function: (loss, e, sum e) forward, a gradient from e alone."""
    import mlx.core as mx

    @mx.custom_function
    def forward(logits: Any, targets: Any) -> tuple[Any, Any, Any]:
        top = logits.max(axis=-1, keepdims=True)
        e = mx.exp(logits - top)
        total = e.sum(axis=-1, keepdims=True)
        lse = (mx.log(total) + top).squeeze(-1)
        score = mx.take_along_axis(logits, mx.expand_dims(targets, -1), axis=-1).squeeze(-1)
        return lse - score, e, total

    @forward.vjp
    def backward(primals: Any, cotangents: Any, outputs: Any) -> tuple[Any, Any]:
        logits, targets = primals
        _, e, total = outputs
        hot = mx.arange(logits.shape[-1]) == mx.expand_dims(targets, -1)
        grad = mx.expand_dims(cotangents[0], -1) * (e / total - hot)
        return grad, mx.zeros_like(targets)

    return forward
