"""bench serve: `mlxtune serve` beside `mlx_lm.server`, each started on a free loopback port
(bench.procs) and driven by the same bounded asyncio + httpx streaming client (`drive`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.bench.core import Progress, Recorder, Target, filler
from mlxtune.bench.procs import child_config_yaml, cli_command, running_server
from mlxtune.errors import MlxtuneError
from mlxtune.stats import percentile

if TYPE_CHECKING:
    from mlxtune.config import Config


@dataclass
class LoadResult:
    """One load phase against a server."""

    concurrency: int
    requests: int
    ok: int = 0
    errors: int = 0
    n503: int = 0
    timed_out: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)  # request index -> streamed answer

    @property
    def completion_tps(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    def figures(self) -> dict[str, float | None]:
        return {
            "completion_tps": self.completion_tps,
            "latency_p50_ms": _pct_ms(self.latencies_s, 50),
            "latency_p95_ms": _pct_ms(self.latencies_s, 95),
            "latency_p99_ms": _pct_ms(self.latencies_s, 99),
            "ttft_p50_ms": _pct_ms(self.ttfts_s, 50),
            "ok": self.ok,
            "errors": self.errors + self.timed_out,
            "n503": self.n503,
        }


def _pct_ms(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else 1000 * p


async def _one_request(
    client: Any, url: str, body: dict[str, Any], res: LoadResult, timeout: float, index: int = 0
) -> None:
    import httpx

    t0 = time.perf_counter()
    first: float | None = None
    tokens = chunks = 0
    pieces: list[str] = []
    try:
        async with client.stream("POST", url, json=body, timeout=timeout) as resp:
            if resp.status_code != 200:
                await resp.aread()
                if resp.status_code == 503:
                    res.n503 += 1
                else:
                    res.errors += 1
                    if len(res.error_samples) < 3:
                        res.error_samples.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    tokens = int(event["usage"].get("completion_tokens") or 0)
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        pieces.append(choice["delta"]["content"])
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        res.errors += 1
        if len(res.error_samples) < 3:
            res.error_samples.append(f"{type(e).__name__}: {e}"[:200])
        return
    res.ok += 1
    res.texts[index] = "".join(pieces)
    res.completion_tokens += tokens or chunks  # streamed chunks when the server sends no usage
    res.latencies_s.append(time.perf_counter() - t0)
    if first is not None:
        res.ttfts_s.append(first)


async def drive(
    base_url: str,
    model: str | None,
    prompts: list[list[dict[str, str]]],
    *,
    concurrency: int,
    requests: int,
    max_tokens: int,
    time_limit_s: float,
    api_key: str | None = None,
    extra: Callable[[int], dict[str, Any]] | None = None,
) -> LoadResult:
    """Send `requests` streaming chat completions, at most `concurrency` at a time, all within
    `time_limit_s`; requests cut off by the limit count as timed out. `extra(i)`: fields
    added to request i's body (a response_format, say)."""
    import httpx

    res = LoadResult(concurrency=concurrency, requests=requests)
    sem = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/v1/chat/completions"

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        body: dict[str, Any] = {
            "messages": prompts[i % len(prompts)],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if model:
            body["model"] = model
        if extra is not None:
            body |= extra(i)
        async with sem:
            await _one_request(client, url, body, res, time_limit_s, i)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(limits=limits, timeout=time_limit_s, headers=headers) as client:
        tasks = [asyncio.ensure_future(worker(i, client)) for i in range(requests)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        res.timed_out = len(pending)
    res.wall_s = time.perf_counter() - t0
    return res


def run_load(
    base_url: str, model: str | None, prompts: list[list[dict[str, str]]], **kw: Any
) -> LoadResult:
    return asyncio.run(drive(base_url, model, prompts, **kw))


def scrape_peak_memory(url: str, api_key: str | None = None) -> float | None:
    """Peak MLX memory in GB, when the server exports it on /metrics (mlxtune serve does;
    with an API key set, /metrics needs it)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = httpx.get(url + "/metrics", timeout=2, headers=headers)
        if r.status_code == 200:
            for line in r.text.splitlines():
                name, _, value = line.partition(" ")
                if "peak_memory" in name and not line.startswith("#"):
                    v = float(value.split()[0])
                    return v / 1e9 if "bytes" in name else v
    return None


def serve_adapter(cfg: Config) -> tuple[str | None, Path | None]:
    """(model name to request, adapter path): the first configured adapter, else the base."""
    if cfg.serve.adapters:
        name, path = next(iter(cfg.serve.adapters.items()))
        return name, Path(path)
    return cfg.serve.base_name, None


def server_command(cfg: Config, target: Target, port: int, work: Path) -> list[str]:
    _, adapter = serve_adapter(cfg)
    if target == "mlx-lm":
        cmd = [
            sys.executable, "-m", "mlx_lm", "server", "--model", cfg.model.path,
            "--host", "127.0.0.1", "--port", str(port), "--temp", "0",
        ]  # fmt: skip
        if adapter is not None:
            cmd += ["--adapter-path", str(adapter)]
        return cmd
    cfg_file = work / f"serve-{port}.yaml"
    cfg_file.write_text(child_config_yaml(cfg))
    return [*cli_command(), "serve", "-c", str(cfg_file), "--port", str(port)]


def serve_prompts(n: int = 16) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Question {i}: " + filler(i)[:160]}] for i in range(n)]


def bench_serve_once(
    cfg: Config,
    target: Target,
    work: Path,
    rec: Recorder,
    progress: Progress,
    notes: list[str] | None = None,
) -> None:
    b = cfg.bench
    name, _ = serve_adapter(cfg)
    model = None if target == "mlx-lm" else name  # mlx_lm.server: no name = the --model it loaded
    key = cfg.serve.resolved_api_key() if target == "mlxtune" else None
    prompts = serve_prompts()
    log = work / f"server-{target}.log"
    with running_server(
        lambda port: server_command(cfg, target, port, work),
        log,
        b.time_limit_s,
        name="bench serve: server",
    ) as server:
        # One untimed request so model load and compilation are not in the first level.
        run_load(
            server.url,
            model,
            prompts,
            concurrency=1,
            requests=1,
            max_tokens=8,
            time_limit_s=b.time_limit_s,
            api_key=key,
        )
        phases = [(f"c={c}", c, b.requests_per_level) for c in b.concurrency]
        if b.sustained_requests:
            phases.append(("sustained", max(b.concurrency), b.sustained_requests))
        for case, conc, n in phases:
            progress(f"serve {case} [{target}]: {n} requests")
            res = run_load(
                server.url,
                model,
                prompts,
                concurrency=conc,
                requests=n,
                max_tokens=b.gen_tokens,
                time_limit_s=b.time_limit_s,
                api_key=key,
            )
            if res.ok == 0:
                raise MlxtuneError(
                    f"bench serve ({target}) {case}: no request succeeded: "
                    f"{'; '.join(res.error_samples) or 'timed out'}"
                )
            rec.add("serve", case, target, res.figures())
            if (res.errors or res.timed_out) and notes is not None:
                samples = "; ".join(res.error_samples) or "no sample"
                notes.append(
                    f"serve {case} [{target}]: {res.errors} errors, {res.timed_out} timed out"
                    f" ({samples})"
                )
        peak_memory_gb = scrape_peak_memory(server.url, key)
    rec.add(
        "serve",
        "server",
        target,
        {"max_rss_mb": server.max_rss_mb, "peak_memory_gb": peak_memory_gb},
    )
