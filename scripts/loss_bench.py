"""Time and peak memory of the training loss, MLX's cross-entropy against mlxtune's
(`train/loss.py`): an lm_head projection and the loss, forward and backward, compiled, at
the shapes given. Interleaved runs; medians printed (docs/benchmarks.md, issue 18).

    python scripts/loss_bench.py --positions 112 --hidden 256 --vocab 2048
    python scripts/loss_bench.py --positions 1024 --hidden 256 --vocab 32000 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlxtune  # noqa: F401  (OpenBLAS before mlx, as every entry point)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=112, help="trained positions a step")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50, help="steps timed per run")
    a = ap.parse_args()

    import mlx.core as mx
    import mlx.nn as nn

    from mlxtune.runtime import blas_threads
    from mlxtune.train.loss import cross_entropy

    blas_threads(1)
    k1, k2, k3 = mx.random.split(mx.random.key(0), 3)
    hidden = mx.random.normal((a.positions, a.hidden), key=k1)
    head = mx.random.normal((a.vocab, a.hidden), key=k2) * a.hidden**-0.5
    targets = mx.random.randint(0, a.vocab, (a.positions,), key=k3)
    mx.eval(hidden, head, targets)

    def step(ce: object) -> object:
        def loss(h: mx.array) -> mx.array:
            return ce(h @ head.T, targets).mean()  # type: ignore[operator]

        return mx.compile(mx.value_and_grad(loss))

    sides = {"mlx": step(nn.losses.cross_entropy), "mlxtune": step(cross_entropy)}
    ms: dict[str, list[float]] = {k: [] for k in sides}
    peak: dict[str, float] = {}
    values: dict[str, float] = {}
    for f in sides.values():
        mx.eval(f(hidden))  # trace and allocate
    for _ in range(a.runs):
        for name, f in sides.items():
            mx.reset_peak_memory()
            start = time.perf_counter()
            for _ in range(a.iters):
                value, grad = f(hidden)
                mx.eval(value, grad)
            ms[name].append((time.perf_counter() - start) / a.iters * 1e3)
            peak[name] = max(peak.get(name, 0.0), mx.get_peak_memory() / 1e6)
            values[name] = value.item()
    print(f"positions {a.positions}, hidden {a.hidden}, vocab {a.vocab}: {a.runs} runs")
    for name in sides:
        runs = ", ".join(f"{t:.2f}" for t in ms[name])
        print(
            f"{name:8s} {statistics.median(ms[name]):8.2f} ms ({runs})  "
            f"peak {peak[name]:.0f} MB  loss {values[name]:.7f}"
        )


if __name__ == "__main__":
    main()
