"""What serving several adapters of one base costs: `mlxtune serve` with 1, 2 and 4 adapters
(random LoRA adapters r8, different seeds), the same closed-loop load (16 streaming clients x 4
requests, request i addressed to adapter i mod N), in three modes:
  fused    one batch per adapter, LoRA folded into the adapter's layers (mix_adapters=false)
  unfused  one batch per adapter, LoRA layers over the shared base (fuse_adapters=false too)
  mixed    every adapter in one batch, LoRA applied per row (serve.mix_adapters, the default)
The figures in docs/benchmarks.md ("Several adapters") come from this script.

    python scripts/bench_adapters.py [--model build/bench/models/tiny] [--repeat 3]
        [--cases fused:1,fused:2,mixed:2,fused:4,mixed:4]

Runs interleave: every case once per repeat, in the order given, so load on the machine hits
all alike. Besides tokens/s it reports the server's CPU per completion token (user + system
of the server process during the load), which moves far less with the machine's load.
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
MODES = {  # serve settings per mode
    "fused": {"serve.fuse_adapters": "true", "serve.mix_adapters": "false"},
    "unfused": {"serve.fuse_adapters": "false", "serve.mix_adapters": "false"},
    "mixed": {"serve.fuse_adapters": "true", "serve.mix_adapters": "true"},
}
DEFAULT_CASES = "fused:1,fused:2,mixed:2,unfused:2,fused:4,mixed:4,unfused:4"


def measure(model: Path, adapters: list[Path], mode: str, work: Path) -> dict[str, Any]:
    from mlxtune.bench.procs import cpu_seconds, running_server
    from mlxtune.bench.serve import run_load, serve_prompts, server_command
    from mlxtune.config import load_config

    names = [f"a{i}" for i in range(len(adapters))]
    sets = [f"model.path={model}", *(f"{k}={v}" for k, v in MODES[mode].items())]
    sets += [f"serve.adapters.{n}={p}" for n, p in zip(names, adapters, strict=True)]
    cfg = load_config(None, sets)
    with running_server(
        lambda port: server_command(cfg, "mlxtune", port, work), work / "server.log", 120
    ) as server:
        for name in names:  # untimed: each adapter's first batch
            run_load(server.url, name, serve_prompts(), concurrency=1, requests=1,
                     max_tokens=8, time_limit_s=60)  # fmt: skip
        pid = server.proc.pid if server.proc is not None else None
        cpu0 = cpu_seconds(pid) if pid is not None else None
        res = run_load(
            server.url, None, serve_prompts(), concurrency=CLIENTS,
            requests=CLIENTS * REQUESTS_PER_CLIENT, max_tokens=64, time_limit_s=300,
            extra=lambda i: {"model": names[i % len(names)]},
        )  # fmt: skip
        cpu1 = cpu_seconds(pid) if pid is not None else None
    figs = res.figures()
    cpu_ms = None
    if cpu0 is not None and cpu1 is not None and res.completion_tokens:
        cpu_ms = 1000 * (cpu1 - cpu0) / res.completion_tokens
    return {
        "completion_tps": res.completion_tps,
        "p95_ms": figs["latency_p95_ms"],
        "cpu_ms_per_token": cpu_ms,
        "ok": res.ok,
        "loadavg": os.getloadavg()[0],
    }


def _spread(values: list[float]) -> str:
    """median (min–max)"""
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "build/bench/models/tiny")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--cases", default=DEFAULT_CASES, help=f"MODE:N,... (modes: {', '.join(MODES)})"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cases = [(mode, int(n)) for mode, _, n in (c.partition(":") for c in args.cases.split(","))]
    if unknown := [m for m, _ in cases if m not in MODES]:
        ap.error(f"--cases: unknown mode {unknown[0]!r} (one of {', '.join(MODES)})")
    # a SIGTERM (a `timeout`, say) still runs running_server's cleanup: no server left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from mlxtune.tiny_model import random_adapter

    work = Path(tempfile.mkdtemp(prefix="mlxtune-adapters-"))
    most = max(n for _, n in cases)
    adapters = [
        random_adapter(args.model, work / f"adapter{i}", b_scale=0.02, seed=i) for i in range(most)
    ]
    runs: dict[str, list[dict[str, Any]]] = {}
    load = [os.getloadavg()[0]]
    for r in range(args.repeat):
        for mode, n in cases:
            key = f"{mode} adapters={n}"
            runs.setdefault(key, []).append(measure(args.model, adapters[:n], mode, work))
            print(f"repeat {r + 1}: {key}: {runs[key][-1]}", file=sys.stderr)
    load.append(os.getloadavg()[0])
    loads = [v["loadavg"] for values in runs.values() for v in values]
    print(f"load average (1 min) {load[0]:.1f} at start, {min(loads):.1f}–{max(loads):.1f} "
          f"after each case, {load[1]:.1f} at end")  # fmt: skip
    one = runs.get("fused adapters=1")
    base_cpu = statistics.median(v["cpu_ms_per_token"] for v in one) if one else None
    print("| case | tok/s median (min–max) | CPU ms/token median (min–max) | "
          "CPU vs fused adapters=1 | p95 ms median |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for key, values in runs.items():
        tps = [v["completion_tps"] for v in values]
        cpu = [v["cpu_ms_per_token"] for v in values if v["cpu_ms_per_token"] is not None]
        ratio = f"{statistics.median(cpu) / base_cpu:.2f}x" if cpu and base_cpu else "-"
        p95 = statistics.median(v["p95_ms"] for v in values)
        print(f"| {key} | {_spread(tps)} | {_spread(cpu) if cpu else '-'} | {ratio} | {p95:.0f} |")
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "loadavg": load}, indent=2))


if __name__ == "__main__":
    main()
