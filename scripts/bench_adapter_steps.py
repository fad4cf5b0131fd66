"""The model step alone, in process: CPU time of one decode step (and of one prefill) for N
adapters decoded as N fused batches (one per adapter) or as one mixed batch
(`serve.mix_adapters`). Process CPU time, so set OPENBLAS_NUM_THREADS=1 for figures that
spinning BLAS threads do not inflate. docs/benchmarks.md ("Several adapters") quotes it.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_adapter_steps.py [--repeat 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import mlxtune  # noqa: E402, F401 - OpenBLAS is preloaded on mlx's first import through it

BATCH = 16
PROMPT = 64  # tokens of KV before decoding
PREFILL = (8, 48)  # prompts x tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "build/bench/models/tiny")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()

    import mlx.core as mx
    from mlx_lm.generate import _merge_caches
    from mlx_lm.models.cache import make_prompt_cache

    from mlxtune.config import Config
    from mlxtune.serve.models import load_models
    from mlxtune.tiny_model import random_adapter

    work = Path(tempfile.mkdtemp(prefix="mlxtune-steps-"))
    adapters = {
        f"a{i}": str(random_adapter(args.model, work / f"a{i}", b_scale=0.02, seed=i))
        for i in range(4)
    }

    def models(mix: bool) -> dict[str, Any]:
        serve = {"adapters": adapters, "mix_adapters": mix}
        return load_models(
            Config.model_validate({"model": {"path": str(args.model)}, "serve": serve})
        )

    fused, mixed = models(False), models(True)
    mm = mixed["a0"].mixed.model

    def caches(model: Any, rows: list[int] | None, b: int) -> list[Any]:
        if rows is None:
            return _merge_caches([make_prompt_cache(model) for _ in range(b)])
        return _merge_caches([mm.cache_for(r) for r in rows])

    def cpu_ms(fn: Callable[[], None], n: int) -> float:
        t = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t) / n * 1000

    def decode(model: Any, b: int, rows: list[int] | None = None) -> float:
        c = caches(model, rows, b)
        mx.eval(model(mx.ones((b, PROMPT), dtype=mx.uint32), cache=c))
        x = mx.ones((b, 1), dtype=mx.uint32)
        return cpu_ms(lambda: mx.eval(model(x, cache=c)), args.steps)

    def prefill(model: Any, b: int, rows: list[int] | None = None) -> float:
        x = mx.ones((b, PREFILL[1]), dtype=mx.uint32)
        return cpu_ms(lambda: mx.eval(model(x, cache=caches(model, rows, b))), 10)

    def separate(run: Callable[..., float], batches: int, b: int) -> float:
        """One fused batch of b rows per adapter, stepped one after the other (the old way)."""
        return sum(run(fused[f"a{i}"].model, b) for i in range(batches))

    def rows(adapters: int, b: int) -> list[int]:
        return [1 + i % adapters for i in range(b)]

    cases: dict[str, Callable[[], float]] = {
        "decode: fused, 1 adapter, batch 16": lambda: decode(fused["a0"].model, BATCH),
        "decode: fused, 2 batches of 8": lambda: separate(decode, 2, 8),
        "decode: fused, 4 batches of 4": lambda: separate(decode, 4, 4),
        "decode: mixed, 2 adapters, batch 16": lambda: decode(mm, BATCH, rows(2, BATCH)),
        "decode: mixed, 4 adapters, batch 16": lambda: decode(mm, BATCH, rows(4, BATCH)),
        "decode: mixed layers, 1 adapter (unfused)": lambda: decode(mm, BATCH, rows(1, BATCH)),
        "prefill 8x48: fused, 1 adapter": lambda: prefill(fused["a0"].model, PREFILL[0]),
        "prefill 8x48: fused, 4 batches of 2": lambda: separate(prefill, 4, 2),
        "prefill 8x48: mixed, 4 adapters": lambda: prefill(mm, PREFILL[0], rows(4, PREFILL[0])),
    }  # fmt: skip
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeat):  # interleaved: every case once per repeat
        for name, case in cases.items():
            runs[name].append(case())
    print("| case | CPU ms per call, median (min–max) |\n|---|---:|")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f}) |")


if __name__ == "__main__":
    main()
