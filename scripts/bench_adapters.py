"""What serving several adapters of one base costs: `mlxtune serve` with 1, 2 and 4 adapters
(random LoRA adapters, different seeds), the same closed-loop load (16 streaming clients x 4
requests, request i addressed to adapter i mod N), fused and unfused (`serve.fuse_adapters`).
Each adapter decodes in its own batch, so N adapters split one load into N smaller batches.
The figures in docs/benchmarks.md ("Several adapters") come from this script.

    python scripts/bench_adapters.py [--model build/bench/models/tiny] [--repeat 3]

Runs interleave: every (fuse, N) once per repeat, so load on the machine hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

CLIENTS = 16
REQUESTS_PER_CLIENT = 4


def measure(model: Path, adapters: list[Path], fuse: bool, work: Path) -> dict[str, Any]:
    from mlxtune.bench.procs import running_server
    from mlxtune.bench.serve import run_load, serve_prompts, server_command
    from mlxtune.config import load_config

    names = [f"a{i}" for i in range(len(adapters))]
    sets = [f"model.path={model}", f"serve.fuse_adapters={str(fuse).lower()}"]
    sets += [f"serve.adapters.{n}={p}" for n, p in zip(names, adapters, strict=True)]
    cfg = load_config(None, sets)
    with running_server(
        lambda port: server_command(cfg, "mlxtune", port, work), work / "server.log", 120
    ) as server:
        for name in names:  # untimed: each adapter's first batch
            run_load(server.url, name, serve_prompts(), concurrency=1, requests=1,
                     max_tokens=8, time_limit_s=60)  # fmt: skip
        res = run_load(
            server.url, None, serve_prompts(), concurrency=CLIENTS,
            requests=CLIENTS * REQUESTS_PER_CLIENT, max_tokens=64, time_limit_s=300,
            extra=lambda i: {"model": names[i % len(names)]},
        )  # fmt: skip
    figs = res.figures()
    return {"completion_tps": res.completion_tps, "p95_ms": figs["latency_p95_ms"], "ok": res.ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "build/bench/models/tiny")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    # a SIGTERM (a `timeout`, say) still runs running_server's cleanup: no server left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from mlxtune.tiny_model import random_adapter

    work = Path(tempfile.mkdtemp(prefix="mlxtune-adapters-"))
    adapters = [
        random_adapter(args.model, work / f"adapter{i}", b_scale=0.02, seed=i) for i in range(4)
    ]
    cases = [(fuse, n) for fuse in (True, False) for n in (1, 2, 4)]
    runs: dict[str, list[dict[str, Any]]] = {}
    load = [os.getloadavg()[0]]
    for r in range(args.repeat):
        for fuse, n in cases:
            key = f"{'fused' if fuse else 'unfused'} adapters={n}"
            runs.setdefault(key, []).append(measure(args.model, adapters[:n], fuse, work))
            print(f"repeat {r + 1}: {key}: {runs[key][-1]}", file=sys.stderr)
    load.append(os.getloadavg()[0])
    print(f"load average {load[0]:.1f} at start, {load[1]:.1f} at end")
    print("| case | completion tok/s median (min–max) | vs 1 adapter | p95 ms |")
    print("|---|---:|---:|---:|")
    for key, values in runs.items():
        tps = [v["completion_tps"] for v in values]
        one = runs[key.split(" ")[0] + " adapters=1"]
        base = statistics.median(v["completion_tps"] for v in one)
        p95 = statistics.median(v["p95_ms"] for v in values)
        print(
            f"| {key} | {statistics.median(tps):.0f} ({min(tps):.0f}–{max(tps):.0f}) | "
            f"{statistics.median(tps) / base:.2f}x | {p95:.0f} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "loadavg": load}, indent=2))


if __name__ == "__main__":
    main()
