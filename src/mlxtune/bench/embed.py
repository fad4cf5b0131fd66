"""`mlxtune bench --what embed`: the seed embedding service's load test, on a served model.

Figures, each printed beside the seed's target: model load time, sequential latency
(mean/p50/p95) and success, QPS at 1/4/8/16 concurrent clients with their 503 counts, and the
server's peak MLX memory and RSS. `--baseline` times the same inputs through mlx-embeddings
(or mlx-lm for a pooled language model) called directly in a loop, interleaved with the served
rounds, and reports the ratio.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from mlxtune.stats import percentile

# The seed service's targets (seeds/002): load < 5 s, mean < 250 ms, > 5 QPS, < 1 GB, > 99%.
TARGETS = {
    "load_s": ("<", 5.0),
    "sequential_mean_ms": ("<", 250.0),
    "qps": (">", 5.0),
    "peak_memory_gb": ("<", 1.0),
    "sequential_success_pct": (">", 99.0),
}


def meets(metric: str, value: float | None) -> bool | None:
    """Whether `value` meets the seed target for `metric` (None: no target or no value)."""
    if metric not in TARGETS or value is None:
        return None
    op, bound = TARGETS[metric]
    return value < bound if op == "<" else value > bound


@dataclass
class EmbedLoad:
    """One load phase: `requests` embeddings calls, at most `concurrency` at a time."""

    concurrency: int
    requests: int
    ok: int = 0
    n503: int = 0
    retry_after_missing: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    refusal_s: list[float] = field(default_factory=list)  # how fast each 503 came back
    error_samples: list[str] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def success_pct(self) -> float:
        return 100.0 * self.ok / self.requests if self.requests else 0.0

    def figures(self) -> dict[str, float | None]:
        ms = [1000 * s for s in self.latencies_s]
        return {
            "qps": self.qps,
            "mean_ms": sum(ms) / len(ms) if ms else None,
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
            "success_pct": self.success_pct,
            "n503": self.n503,
            "errors": self.errors,
        }


async def drive_embeddings(
    base_url: str,
    model: str | None,
    inputs: list[str],
    *,
    concurrency: int,
    requests: int,
    timeout_s: float = 120.0,
    api_key: str | None = None,
) -> EmbedLoad:
    """Send `requests` embeddings calls (one input each), `concurrency` at a time."""
    import httpx

    res = EmbedLoad(concurrency=concurrency, requests=requests)
    sem = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/v1/embeddings"

    async def one(i: int, client: httpx.AsyncClient) -> None:
        body: dict[str, Any] = {"input": inputs[i % len(inputs)]}
        if model:
            body["model"] = model
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
            except (httpx.HTTPError, OSError) as e:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"{type(e).__name__}: {e}"[:200])
                return
            took = time.perf_counter() - t0
            if r.status_code == 200:
                res.ok += 1
                res.latencies_s.append(took)
            elif r.status_code == 503:
                res.n503 += 1
                res.refusal_s.append(took)
                if "retry-after" not in r.headers:
                    res.retry_after_missing += 1
            else:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(f"HTTP {r.status_code}: {r.text[:200]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s, headers=headers) as client:
        await asyncio.gather(*(one(i, client) for i in range(requests)))
    res.wall_s = time.perf_counter() - t0
    return res


def run_embed_load(base_url: str, model: str | None, inputs: list[str], **kw: Any) -> EmbedLoad:
    return asyncio.run(drive_embeddings(base_url, model, inputs, **kw))
