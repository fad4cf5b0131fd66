"""`mlxtune bench --what embed`: the seed embedding service's load test, on a served model.

Figures, each printed beside the seed's target: model load time, sequential latency
(mean/p50/p95) and success, QPS at 1/4/8/16 concurrent clients with their 503 counts, and the
server's peak MLX memory and RSS. `--baseline mlx-lm` times the same model and inputs called
directly in a plain loop, in a process of its own and without mlxtune (mlx-embeddings for a
dedicated model, mlx-lm's model plus masked pooling for a pooled one), interleaved with the
served rounds, so each figure gets its ratio: what serving costs over the bare library.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError
from mlxtune.stats import percentile

if TYPE_CHECKING:
    from mlxtune.bench.core import BenchResult, Progress, Recorder
    from mlxtune.config import Config

# The seed service's targets (seeds/002): load < 5 s, mean < 250 ms, > 5 QPS, < 1 GB, > 99%;
# and issue 13's: under a burst of 32 against a queue of 2, every 503 within 50 ms.
BURST, BURST_QUEUE = 32, 2
TARGETS = {
    "load_s": ("<", 5.0),
    "sequential_mean_ms": ("<", 250.0),
    "qps": (">", 5.0),
    "peak_memory_gb": ("<", 1.0),
    "sequential_success_pct": (">", 99.0),
    "refusal_max_ms": ("<", 50.0),
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
    refusal_server_ms: list[float] = field(default_factory=list)  # their Server-Timing
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
            "refusal_max_ms": 1000 * max(self.refusal_s) if self.refusal_s else None,
            "refusal_server_max_ms": max(self.refusal_server_ms, default=None),
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
                timing = re.search(r"refusal;dur=([0-9.]+)", r.headers.get("server-timing", ""))
                if timing:
                    res.refusal_server_ms.append(float(timing.group(1)))
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


def embed_model_name(cfg: Config) -> str | None:
    """The model bench asks for: the dedicated model, else the first adapter, else the base."""
    from mlxtune.bench.serve import serve_adapter

    return cfg.embed.served_name if cfg.embed.kind == "dedicated" else serve_adapter(cfg)[0]


def bench_embed_once(cfg: Config, work: Path, rec: Recorder, say: Progress) -> None:
    """One served round: start `mlxtune serve` (load = spawn until /health answers), time
    sequential requests, then each concurrency level, then read the server's memory."""
    from mlxtune.bench.core import filler
    from mlxtune.bench.procs import running_server
    from mlxtune.bench.serve import scrape_peak_memory, server_command

    b = cfg.bench
    model = embed_model_name(cfg)
    key = cfg.serve.resolved_api_key()
    inputs = [filler(i)[:200] for i in range(16)]
    t0 = time.perf_counter()
    with running_server(
        lambda port: server_command(cfg, "mlxtune", port, work),
        work / "embed-server.log",
        b.time_limit_s,
    ) as server:
        rec.add("embed", "load", "mlxtune", {"load_s": time.perf_counter() - t0})
        run_embed_load(server.url, model, inputs, concurrency=1, requests=1, api_key=key)
        say(f"embed sequential: {b.requests_per_level} requests")
        seq = run_embed_load(
            server.url, model, inputs, concurrency=1, requests=b.requests_per_level, api_key=key
        )
        figs = seq.figures()
        rec.add(
            "embed",
            "sequential",
            "mlxtune",
            {k: figs[k] for k in ("mean_ms", "p50_ms", "p95_ms", "success_pct")},
        )
        for c in b.concurrency:
            say(f"embed c={c}: {b.requests_per_level} requests")
            res = run_embed_load(
                server.url, model, inputs, concurrency=c, requests=b.requests_per_level,
                api_key=key,
            )  # fmt: skip
            figs = res.figures()
            rec.add("embed", f"c={c}", "mlxtune", {k: figs[k] for k in ("qps", "n503", "errors")})
        peak = scrape_peak_memory(server.url)
    rec.add("embed", "server", "mlxtune", {"peak_memory_gb": peak, "max_rss_mb": server.max_rss_mb})
    bench_embed_burst(cfg, work, rec, say, model, inputs)


def bench_embed_burst(
    cfg: Config, work: Path, rec: Recorder, say: Progress, model: str | None, inputs: list[str]
) -> None:
    """Overload: BURST requests at once against a server whose queue holds BURST_QUEUE, so
    most are refused; how fast the slowest 503 comes back is the figure (fail-fast admission)."""
    from mlxtune.bench.procs import running_server
    from mlxtune.bench.serve import server_command

    small = cfg.model_copy(deep=True)
    small.serve.max_queue = BURST_QUEUE
    key = cfg.serve.resolved_api_key()
    with running_server(
        lambda port: server_command(small, "mlxtune", port, work),
        work / "embed-burst-server.log",
        cfg.bench.time_limit_s,
    ) as server:
        run_embed_load(server.url, model, inputs, concurrency=BURST, requests=BURST, api_key=key)
        say(f"embed burst: {BURST} at once, queue {BURST_QUEUE}")
        res = run_embed_load(
            server.url, model, inputs, concurrency=BURST, requests=BURST, api_key=key
        )  # the second burst: the first pays the process's one-off costs
    figs = res.figures()
    case = f"burst {BURST}, queue {BURST_QUEUE}"
    keys = ("n503", "errors", "refusal_max_ms", "refusal_server_max_ms")
    rec.add("embed", case, "mlxtune", {k: figs[k] for k in keys})


# The baseline: no mlxtune, only the library a user would call. Prints READY once loaded and
# warm (the served side's load also ends at a warm /health), then one line of figures.
# Sequential = one input per call; "c=N" = the same inputs N per call, the most a direct
# caller holding N texts at once can do (the served side gets N concurrent requests).
_DIRECT_MAIN = r"""
import json, sys, time
import mlx.core as mx
spec = json.loads(sys.argv[1])
texts, n = spec["inputs"], spec["requests"]
if spec["kind"] == "dedicated":
    from mlx_embeddings import load
    model, tokenizer = load(spec["model"])
    def embed(batch):
        enc = tokenizer.batch_encode_plus(batch, return_tensors="mlx", padding=True)
        out = model(enc["input_ids"], attention_mask=enc["attention_mask"]).text_embeds
        mx.eval(out)
else:
    from mlx_lm import load
    model, tokenizer = load(spec["model"], adapter_path=spec["adapter"])
    pad = tokenizer.pad_token_id or 0
    def embed(batch):
        ids = [tokenizer.encode(t) for t in batch]
        width = max(len(t) for t in ids)
        x = mx.array([t + [pad] * (width - len(t)) for t in ids])
        mask = mx.array([[1.0] * len(t) + [0.0] * (width - len(t)) for t in ids])
        hidden = model.model(x).astype(mx.float32)  # final normed hidden states
        if spec["pooling"] == "last":
            pooled = hidden[mx.arange(len(ids)), mx.array([len(t) - 1 for t in ids])]
        else:
            pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        mx.eval(pooled / mx.linalg.norm(pooled, axis=-1, keepdims=True))
embed(texts[:1])
print("READY", flush=True)
sequential = []
for i in range(n):
    t0 = time.perf_counter()
    embed([texts[i % len(texts)]])
    sequential.append(time.perf_counter() - t0)
qps = {}
for c in spec["concurrency"]:
    t0 = time.perf_counter()
    for start in range(0, n, c):
        embed([texts[i % len(texts)] for i in range(start, min(start + c, n))])
    qps[c] = n / (time.perf_counter() - t0)
figures = {"sequential_s": sequential, "qps": qps, "peak_memory_gb": mx.get_peak_memory() / 1e9}
print("MLXTUNE_BENCH " + json.dumps(figures), flush=True)
"""


def direct_baseline_name(cfg: Config) -> str:
    """The library the baseline calls: what a user without mlxtune would."""
    return "mlx-embeddings" if cfg.embed.kind == "dedicated" else "mlx-lm"


def bench_embed_direct_once(cfg: Config, rec: Recorder, say: Progress) -> None:
    """One baseline round: the model `bench_embed_once` serves, called directly in a loop in a
    child process, recorded as the baseline of the same figures."""
    from mlxtune.bench.core import filler
    from mlxtune.bench.procs import run_child, tail
    from mlxtune.bench.serve import serve_adapter

    b = cfg.bench
    dedicated = cfg.embed.kind == "dedicated"
    adapter = None if dedicated else serve_adapter(cfg)[1]
    spec = {
        "kind": cfg.embed.kind,
        "model": cfg.embed.model if dedicated else cfg.model.path,
        "adapter": str(adapter) if adapter else None,
        "pooling": cfg.embed.pooling,
        "inputs": [filler(i)[:200] for i in range(16)],
        "requests": b.requests_per_level,
        "concurrency": list(b.concurrency),
    }
    name = direct_baseline_name(cfg)
    say(f"embed [{name} direct]: load, {b.requests_per_level} requests per phase")
    ready: list[float] = []
    t0 = time.perf_counter()
    run = run_child(
        [sys.executable, "-c", _DIRECT_MAIN, json.dumps(spec)],
        timeout=b.time_limit_s,
        on_line=lambda line: ready.append(time.perf_counter() - t0) if line == "READY" else None,
    )
    line = next((x for x in run.lines if x.startswith("MLXTUNE_BENCH ")), None)
    if run.timed_out or run.returncode != 0 or line is None or not ready:
        raise MlxtuneError(f"bench embed ({name} direct): exit {run.returncode}: {tail(run.lines)}")
    figs = json.loads(line.split(" ", 1)[1])
    ms = [1000 * s for s in figs["sequential_s"]]
    rec.add("embed", "load", "mlx-lm", {"load_s": ready[0]})
    rec.add(
        "embed", "sequential", "mlx-lm",
        {"mean_ms": sum(ms) / len(ms), "p50_ms": percentile(ms, 50),
         "p95_ms": percentile(ms, 95), "success_pct": 100.0},
    )  # fmt: skip
    for c, qps in figs["qps"].items():
        rec.add("embed", f"c={c}", "mlx-lm", {"qps": qps})
    rec.add(
        "embed", "server", "mlx-lm",
        {"peak_memory_gb": figs["peak_memory_gb"], "max_rss_mb": run.max_rss_mb},
    )  # fmt: skip


def target_rows(result: BenchResult) -> list[tuple[str, float | None, str, bool | None]]:
    """(figure, median value, seed target, met) for each seed target bench measured."""
    from statistics import median

    def value(case: str, metric: str) -> float | None:
        fig = result.figure("embed", case, metric)
        return median(fig.mlxtune) if fig and fig.mlxtune else None

    qps = [v for c in result.figures if c.section == "embed" and c.metric == "qps"
           for v in c.mlxtune]  # fmt: skip
    picks = {
        "load_s": ("load", value("load", "load_s")),
        "sequential_mean_ms": ("sequential mean", value("sequential", "mean_ms")),
        "qps": ("best QPS", max(qps) if qps else None),
        "peak_memory_gb": ("peak MLX memory", value("server", "peak_memory_gb")),
        "sequential_success_pct": ("sequential success", value("sequential", "success_pct")),
        "refusal_max_ms": (
            "slowest 503 in a burst",
            value(f"burst {BURST}, queue {BURST_QUEUE}", "refusal_max_ms"),
        ),
    }
    rows = []
    for metric, (label, v) in picks.items():
        op, bound = TARGETS[metric]
        rows.append((label, v, f"{op} {bound:g}", meets(metric, v)))
    return rows
