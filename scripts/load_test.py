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
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from mlxtune.bench.procs import Server, running_server
from mlxtune.errors import MlxtuneError
from mlxtune.stats import percentile

MESSAGES = [{"role": "user", "content": "What does the MLX framework do, in one paragraph?"}]


def server_command(kind: str, args: argparse.Namespace, port: int, extra: list[str]) -> list[str]:
    if kind == "mlxtune":
        return [sys.executable, "-m", "mlxtune", "serve", "--set", f"model.path={args.model_path}",
                "--adapter", f"ad={args.adapter_path}", "--port", str(port), *extra]  # fmt: skip
    return [sys.executable, "-m", "mlx_lm", "server", "--model", args.model_path,
            "--adapter-path", args.adapter_path, "--port", str(port)]  # fmt: skip


def serving(
    kind: str, args: argparse.Namespace, extra: list[str]
) -> contextlib.AbstractContextManager[Server]:
    """The server of `kind` on a free port, ready (bench.procs starts and stops it)."""
    log = Path(tempfile.gettempdir()) / f"load_test_{kind}.log"
    return running_server(
        lambda port: server_command(kind, args, port, extra),
        log,
        120,
        ready_path="/health" if kind == "mlxtune" else "/v1/models",
        env={"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
        name=f"{kind} (log {log})",
    )


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


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
    return {
        "clients": clients, "requests": len(lat), "codes": codes, "wall_s": round(wall, 2),
        "p50_s": _round(percentile(lat, 50)), "p95_s": _round(percentile(lat, 95)),
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
        "served_p50_s": _round(percentile(served, 50)),
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
        model = "ad" if kind == "mlxtune" else "default_model"
        with serving(kind, args, []) as server:
            url = server.url
            asyncio.run(level(url, model, 2, 4, args.max_tokens, args.time_limit))  # warm up
            out[kind] = [
                asyncio.run(
                    level(url, model, c, max(args.requests, c), args.max_tokens, args.time_limit)
                )
                for c in levels
            ]
    if args.overload:
        extra = ["--set", "serve.max_queue=8", "--set", "serve.max_batch_size=8"]
        with serving("mlxtune", args, extra) as server:
            out["overload"] = asyncio.run(overload(server.url, args.overload, args.max_tokens))
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
    try:
        main()
    except MlxtuneError as e:  # a server that never came up: one line, not a traceback
        raise SystemExit(str(e)) from None
