"""Milliseconds per training step in one process, wall and CPU: the bench job's real batches
through mlxtune's compiled `TrainStep`, every batch width compiled first, then timed runs.
Steadier than whole commands for comparing one change to the step (docs/benchmarks.md, issue
18, used to compare OpenBLAS thread counts).

    python scripts/step_time.py --model build/bench/models/tiny --data build/bench/data \\
        --blas-threads 1 --runs 3
"""

from __future__ import annotations

import argparse
import time

import mlxtune  # noqa: F401  (OpenBLAS before mlx, as every entry point)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bench.yaml")
    ap.add_argument("--model", default="build/bench/models/tiny")
    ap.add_argument("--data", default="build/bench/data")
    ap.add_argument("--blas-threads", type=int, default=0, help="0 leaves OpenBLAS as it is")
    ap.add_argument("--steps", type=int, default=120, help="steps per timed run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config overrides, KEY=VALUE")
    a = ap.parse_args()

    import mlx.core as mx

    from mlxtune.config import load_config
    from mlxtune.runtime import blas_threads
    from mlxtune.train.loop import LoopArgs, TrainStep
    from mlxtune.train.plan import plan

    if a.blas_threads:
        blas_threads(a.blas_threads)
    sets = [f"model.path={a.model}", f"data.dir={a.data}", "train.epochs=null"]
    sets += ["train.packing=false", "train.grad_clip=null", "train.lr_schedule=constant"]
    cfg = load_config(a.config, sets + a.set, {}, {})
    world = mx.distributed.init()
    planned = plan(cfg, world, resume=None, dry_run=True)
    batches = planned.train_batches
    args = LoopArgs.from_config(
        cfg.train, a.steps, len(planned.valid_examples), None, planned.plan.cpu_streams
    )
    step = TrainStep(planned.model, planned.optimizer, args, world)
    step.shape_like(batches)
    planned.model.train()
    data = [step.to_device(batches.arrays(batches.indices(i))) for i in range(len(batches))]

    def run(n: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        previous = None
        for i in range(n):  # the loop's own overlap: wait for the step before, not this one
            inputs, targets, mask, _ = data[i % len(data)]
            loss, _, _ = step.step(inputs, targets, mask, None, True)
            mx.async_eval(step.state, loss)
            if previous is not None:
                mx.eval(previous)
            previous = loss
        mx.eval(step.state, previous)
        return (time.perf_counter() - wall) / n * 1e3, (time.process_time() - cpu) / n * 1e3

    run(len(data))  # every batch width compiled
    print(f"OpenBLAS threads: {blas_threads()}, CPU streams: {planned.plan.cpu_streams}")
    for _ in range(a.runs):
        wall_ms, cpu_ms = run(a.steps)
        print(f"ms/step wall {wall_ms:.1f} cpu {cpu_ms:.1f}", flush=True)


if __name__ == "__main__":
    main()
