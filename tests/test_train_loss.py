"""The training loss's own gradient (train/loss.py) gives MLX's cross-entropy and its gradient,
to float32 rounding, inside a compiled step as outside one; other dtypes are MLX's exactly."""

from __future__ import annotations

from typing import Any

import pytest

from mlxtune.train.loss import cross_entropy


def _case(shape: tuple[int, ...], vocab: int, seed: int) -> tuple[Any, Any, Any]:
    import mlx.core as mx

    key = mx.random.key(seed)
    k1, k2, k3 = mx.random.split(key, 3)
    logits = mx.random.normal((*shape, vocab), key=k1) * 3
    targets = mx.random.randint(0, vocab, shape, key=k2)
    weights = (mx.random.uniform(shape=shape, key=k3) > 0.3).astype(mx.float32)
    mx.eval(logits, targets, weights)
    return logits, targets, weights


def _mean_loss(ce: Any) -> Any:
    def loss(logits: Any, targets: Any, weights: Any) -> Any:
        return (ce(logits, targets) * weights).sum() / weights.sum()

    return loss


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(("shape", "vocab"), [((37,), 2048), ((3, 11), 500), ((8,), 32000)])
def test_value_and_gradient_match_mlx(shape: tuple[int, ...], vocab: int, compiled: bool) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    logits, targets, weights = _case(shape, vocab, seed=vocab)
    want_f = mx.value_and_grad(_mean_loss(nn.losses.cross_entropy))
    got_f = mx.value_and_grad(_mean_loss(cross_entropy))
    if compiled:
        want_f, got_f = mx.compile(want_f), mx.compile(got_f)
    want, want_grad = want_f(logits, targets, weights)
    got, got_grad = got_f(logits, targets, weights)
    assert got.item() == pytest.approx(want.item(), rel=2e-6)
    per_position = cross_entropy(logits, targets)
    assert per_position.shape == targets.shape
    assert mx.allclose(per_position, nn.losses.cross_entropy(logits, targets), rtol=2e-6).item()
    assert got_grad.shape == logits.shape
    assert mx.allclose(got_grad, want_grad, rtol=1e-4, atol=1e-8).item()
    # the gradient is zero only where no loss is taken
    rows = weights.reshape(-1) > 0
    assert (mx.abs(got_grad.reshape(-1, vocab)).sum(axis=-1) > 0).tolist() == rows.tolist()


def test_below_float32_is_mlx_own() -> None:
    import mlx.core as mx
    import mlx.nn as nn

    logits, targets, _ = _case((16,), 300, seed=1)
    half = logits.astype(mx.bfloat16)
    assert mx.array_equal(cross_entropy(half, targets), nn.losses.cross_entropy(half, targets))
    grad = mx.grad(lambda x: cross_entropy(x, targets).sum())(half)
    want = mx.grad(lambda x: nn.losses.cross_entropy(x, targets).sum())(half)
    assert grad.dtype == mx.bfloat16 and mx.array_equal(grad, want).item()
