"""Side-by-side loopback load test: `mlxtune serve` vs `mlx_lm.server`, same model and adapter.

    PYTHONPATH=src python scripts/load_test.py --model-path MODEL --adapter-path ADAPTER \
        --levels 1,4,8,16 --requests 32 --max-tokens 64

Starts each server on a free 127.0.0.1 port, waits for it, sends `--requests` non-streaming chat
requests at each concurrency level (bounded by `--time-limit` per level), kills the server, and
prints p50/p95 latency and aggregate completion tokens/s as a Markdown table. `--overload N`
then fires N requests at once at mlxtune (small queue) and counts the 503s and how fast they came.
`mlxtune bench --what serve` is the full benchmark; this script is the quick check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from mlxtune.runtime import wait_until_ready

MESSAGES = [{"role": "user", "content": "What does the MLX framework do, in one paragraph?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    kind: str, args: argparse.Namespace, extra: list[str]
) -> tuple[subprocess.Popen[Any], str]:
    from mlxtune.runtime import subprocess_env

    port = free_port()
    if kind == "mlxtune":
        cmd = [sys.executable, "-m", "mlxtune", "serve", "--set", f"model.path={args.model_path}",
               "--adapter", f"ad={args.adapter_path}", "--port", str(port), *extra]  # fmt: skip
        ready = "/health"
    else:
        cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", args.model_path,
               "--adapter-path", args.adapter_path, "--port", str(port)]  # fmt: skip
        ready = "/v1/models"
    env = subprocess_env()
    env.setdefault("HF_HUB_OFFLINE", "1")
    log = open(Path(tempfile.gettempdir()) / f"load_test_{kind}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    problem = wait_until_ready(proc, url + ready, 120)
    if problem:
        proc.kill()
        raise SystemExit(f"{kind} {problem}; see {log.name}")
    return proc, url


async def level(
    url: str, model: str, clients: int, n: int, max_tokens: int, limit: float
) -> dict[str, Any]:
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
    lat: list[float] = []
    tokens = 0
    codes: dict[int, int] = {}
    todo = list(range(n))
    t0 = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while todo and time.perf_counter() - t0 < limit:
            todo.pop()
            s = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=body)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                lat.append(time.perf_counter() - s)
                tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=limit) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [lat[0]] * 19 if lat else [0] * 19
    return {
        "clients": clients, "requests": len(lat), "codes": codes, "wall_s": round(wall, 2),
        "p50_s": round(statistics.median(lat), 3) if lat else None, "p95_s": round(q[18], 3),
        "tokens": tokens, "tok_per_s": round(tokens / wall, 1),
    }  # fmt: skip


async def overload(url: str, n: int, max_tokens: int) -> dict[str, Any]:
    body = {"model": "ad", "messages": MESSAGES, "max_tokens": max_tokens}
    results: list[tuple[int, float]] = []

    async def one(http: httpx.AsyncClient) -> None:
        s = time.perf_counter()
        r = await http.post(url + "/v1/chat/completions", json=body)
        results.append((r.status_code, time.perf_counter() - s))

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=n)) as http:
        await asyncio.gather(*(one(http) for _ in range(n)))
    refused = sorted(t for c, t in results if c == 503)
    served = sorted(t for c, t in results if c == 200)
    return {
        "sent": n, "served": len(served), "refused_503": len(refused),
        "refused_max_s": round(refused[-1], 3) if refused else None,
        "served_p50_s": round(statistics.median(served), 3) if served else None,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--adapter-path", required=True)
    p.add_argument("--servers", default="mlxtune,mlx-lm")
    p.add_argument("--levels", default="1,4,8,16")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--time-limit", type=float, default=120, help="seconds per level at most")
    p.add_argument("--overload", type=int, default=0, help="burst size for the overload phase")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    out: dict[str, Any] = {}
    for kind in args.servers.split(","):
        proc, url = start(kind, args, [])
        model = "ad" if kind == "mlxtune" else "default_model"
        try:
            asyncio.run(level(url, model, 2, 4, args.max_tokens, args.time_limit))  # warm up
            out[kind] = [
                asyncio.run(
                    level(url, model, c, max(args.requests, c), args.max_tokens, args.time_limit)
                )
                for c in levels
            ]
        finally:
            proc.terminate()
            proc.wait(30)
    if args.overload:
        extra = ["--set", "serve.max_queue=8", "--set", "serve.max_batch_size=8"]
        proc, url = start("mlxtune", args, extra)
        try:
            out["overload"] = asyncio.run(overload(url, args.overload, args.max_tokens))
        finally:
            proc.terminate()
            proc.wait(30)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print("| server | clients | requests | p50 s | p95 s | completion tok/s |")
    print("|---|---|---|---|---|---|")
    for kind, rows in out.items():
        if kind == "overload":
            continue
        for r in rows:
            print(f"| {kind} | {r['clients']} | {r['requests']} | {r['p50_s']} | {r['p95_s']} "
                  f"| {r['tok_per_s']} |")  # fmt: skip
    if "overload" in out:
        print(f"\noverload: {json.dumps(out['overload'])}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
