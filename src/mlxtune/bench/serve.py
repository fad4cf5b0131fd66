"""bench serve: `mlxtune serve` beside `mlx_lm.server`, both serving the same LoRA adapter, each
started on a free loopback port (bench.procs) and driven by the same closed-loop asyncio + httpx
clients (`drive`), streamed and whole-answer, at each `bench.concurrency` level."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlxtune.bench.core import Progress, Recorder, Target, filler
from mlxtune.bench.procs import child_config_yaml, cli_command, cpu_seconds, running_server
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
    events: int = 0  # SSE data events of the streamed answers that succeeded, [DONE] excluded
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)  # request index -> streamed answer

    @property
    def completion_tps(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def success_pct(self) -> float:
        return 100 * self.ok / self.requests if self.requests else 0.0

    def figures(self) -> dict[str, float | None]:
        return {
            "completion_tps": self.completion_tps,
            "latency_p50_ms": _pct_ms(self.latencies_s, 50),
            "latency_p95_ms": _pct_ms(self.latencies_s, 95),
            "latency_p99_ms": _pct_ms(self.latencies_s, 99),
            "ttft_p50_ms": _pct_ms(self.ttfts_s, 50),
            "events_per_answer": self.events / self.ok if self.ok else None,
            "ok": self.ok,
            "errors": self.errors + self.timed_out,
            "n503": self.n503,
        }


def _pct_ms(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else 1000 * p


def _failed(res: LoadResult, why: str) -> None:
    res.errors += 1
    if len(res.error_samples) < 3:
        res.error_samples.append(why[:200])


async def _one_request(
    client: Any, url: str, body: dict[str, Any], res: LoadResult, timeout: float, index: int = 0
) -> None:
    """One chat completion, streamed or whole as `body["stream"]` says, into `res`."""
    import httpx

    t0 = time.perf_counter()
    first: float | None = None
    tokens = chunks = events = 0
    pieces: list[str] = []
    try:
        async with client.stream("POST", url, json=body, timeout=timeout) as resp:
            if resp.status_code != 200:
                await resp.aread()
                if resp.status_code == 503:
                    res.n503 += 1
                else:
                    _failed(res, f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            if not body.get("stream"):
                answer = json.loads(await resp.aread())
                tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
                pieces = [c["message"].get("content") or "" for c in answer["choices"][:1]]
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    events += 1
                    if event.get("usage"):
                        tokens = int(event["usage"].get("completion_tokens") or 0)
                    for choice in event.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            pieces.append(choice["delta"]["content"])
                            chunks += 1
                            if first is None:
                                first = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, OSError) as e:
        _failed(res, f"{type(e).__name__}: {e}")
        return
    res.ok += 1
    res.events += events
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
    stream: bool = True,
) -> LoadResult:
    """`concurrency` clients in a closed loop (each sends its next request when its last one
    ends) until `requests` chat completions are sent, all within `time_limit_s`; requests cut
    off by the limit count as timed out. `extra(i)`: fields added to request i's body."""
    import httpx

    res = LoadResult(concurrency=concurrency, requests=requests)
    url = base_url.rstrip("/") + "/v1/chat/completions"
    indices = iter(range(requests))
    finished = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal finished
        for i in indices:  # shared: the next free request index
            body: dict[str, Any] = {
                "messages": prompts[i % len(prompts)],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "stream": stream,
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            if model:
                body["model"] = model
            if extra is not None:
                body |= extra(i)
            await _one_request(client, url, body, res, time_limit_s, i)
            finished += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(limits=limits, timeout=time_limit_s, headers=headers) as client:
        tasks = [asyncio.ensure_future(client_loop(client)) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    res.timed_out = requests - finished
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


def with_bench_adapter(cfg: Config, work: Path) -> Config:
    """`cfg` serving an adapter: the configured one, else a random LoRA adapter written under
    `work` (a served adapter is the product's main case, so that is what serve measures)."""
    if cfg.serve.adapters:
        return cfg
    from mlxtune.tiny_model import random_adapter

    adapter = random_adapter(Path(cfg.model.path), work / "bench-adapter", b_scale=0.02)
    out = cfg.model_copy(deep=True)
    # assigned, not mutated, so the child's config (only the keys set) carries it
    out.serve = out.serve.model_copy(update={"adapters": {"bench": str(adapter)}})
    return out


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


def blas_note(cfg: Config, section: Literal["serve", "train"] = "serve") -> str:
    """Which OpenBLAS thread count each side ran with, since the sides differ by default."""
    from mlxtune.runtime import (
        blas_threads,
        preload_openblas,
        resolve_blas_threads,
        train_blas_threads,
    )

    preload_openblas()  # what the server children load (subprocess_env)
    library = blas_threads()
    if library is None:
        return f"{section}: no OpenBLAS loaded; both sides use MLX's own BLAS"
    if section == "serve":
        ours = f"{resolve_blas_threads(cfg.serve.blas_threads)} (serve.blas_threads)"
    else:  # as `mlxtune train` will pick: its plan prints the same
        import mlx.core as mx

        from mlxtune.bench.train import model_config_int
        from mlxtune.runtime import train_cpu_streams

        t = cfg.train
        on_cpu = mx.default_device().type == mx.DeviceType.cpu
        streams, streams_why = train_cpu_streams(t.cpu_streams, t.batch_size, 1, on_cpu)
        width = model_config_int(cfg, "hidden_size")
        threads, why = train_blas_threads(t.blas_threads, width, streams)
        ours = f"{threads or library} (train.blas_threads: {why})"
        return (
            f"train: OpenBLAS threads: mlxtune {ours}, mlx_lm lora {library} (the library's "
            f"default here); CPU streams: mlxtune {streams} ({streams_why}), mlx_lm lora 1"
        )
    return (
        f"serve: OpenBLAS threads: mlxtune {ours}, mlx_lm.server {library} (the library's "
        "default here)"
    )


def stream_note(cfg: Config) -> str:
    """How finely each side streamed: the interval changes chunks per answer, not the text."""
    ms = cfg.serve.stream_interval_ms
    ours = (
        f"text held up to {ms:g} ms after the first chunk (serve.stream_interval_ms)"
        if ms
        else "a chunk per piece of text (serve.stream_interval_ms 0)"
    )
    return f"serve: streamed chunks: mlxtune {ours}; mlx_lm.server a chunk per token"


def serve_prompts(n: int = 16) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Question {i}: " + filler(i)[:160]}] for i in range(n)]


# The seed project's own figures (its README; a different, larger model on other hardware):
# they show the scale the levels were chosen at, not a speed to compare with.
SEED_FIGURES: dict[str, dict[str, float]] = {
    "seed c=1": {"requests_per_s": 2.12},
    "seed c=5": {"requests_per_s": 1.93},
    "seed c=10": {"requests_per_s": 2.04},
    "seed c=20": {"requests_per_s": 2.08},
    "seed sustained": {"requests_per_s": 1.46},
    "health": {"health_ms": 3.93},
}
SEED_LEVELS = (1, 5, 10, 20)
SEED_SUSTAINED_CLIENTS = 10
SEED_NOTE = (
    "seed column: the seed project's own figures, measured on a different (larger) model and "
    "machine; they show the levels' scale, not a speed to compare with"
)
HEALTH_PROBES = 20


def health_ms(url: str, api_key: str | None, probes: int = HEALTH_PROBES) -> float | None:
    """Median wall time of a GET /health on a kept-alive connection, in ms."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    times: list[float] = []
    with httpx.Client(timeout=10, headers=headers) as client:
        for _ in range(probes):
            t0 = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/health").status_code == 200:
                    times.append(time.perf_counter() - t0)
    return _pct_ms(times, 50)


def serve_phases(cfg: Config) -> list[tuple[str, int, int, bool]]:
    """(case, clients, requests, stream) for each load phase, in the order they run."""
    b = cfg.bench
    phases = [
        (f"{mode} c={c}", c, c * b.requests_per_client, mode == "stream")
        for mode in b.serve_modes
        for c in b.concurrency
    ]
    if b.seed_levels:
        phases += [(f"seed c={c}", c, c * b.requests_per_client, False) for c in SEED_LEVELS]
        if b.sustained_requests:
            phases.append(("seed sustained", SEED_SUSTAINED_CLIENTS, b.sustained_requests, False))
    return phases


def bench_serve_once(
    cfg: Config,
    target: Target,
    work: Path,
    rec: Recorder,
    progress: Progress,
    notes: list[str] | None = None,
) -> str:
    """One server of `target`, every phase of `serve_phases` against it; returns its answer to
    the untimed first request (the suite checks both sides gave the same one)."""
    b = cfg.bench
    name, _ = serve_adapter(cfg)
    # mlx_lm.server: no model field = "default_model", which it serves with --adapter-path
    model = None if target == "mlx-lm" else name
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
        first = run_load(
            server.url,
            model,
            prompts,
            concurrency=1,
            requests=1,
            max_tokens=b.gen_tokens,
            time_limit_s=b.time_limit_s,
            api_key=key,
            stream=False,
        )
        rec.add("serve", "health", target, {"health_ms": health_ms(server.url, key)})
        for case, clients, n, stream in serve_phases(cfg):
            progress(f"serve {case} [{target}]: {clients} clients, {n} requests")
            pid = server.proc.pid if server.proc is not None else None
            cpu0 = cpu_seconds(pid) if pid is not None else None
            client0 = time.process_time()  # this process: the clients, nothing else meanwhile
            res = run_load(
                server.url,
                model,
                prompts,
                concurrency=clients,
                requests=n,
                max_tokens=b.gen_tokens,
                time_limit_s=b.time_limit_s,
                api_key=key,
                stream=stream,
            )
            client_s = time.process_time() - client0
            if res.ok == 0:
                raise MlxtuneError(
                    f"bench serve ({target}) {case}: no request succeeded: "
                    f"{'; '.join(res.error_samples) or 'timed out'}"
                )
            if case.startswith("seed"):
                figures: dict[str, float | None] = {
                    "requests_per_s": res.requests_per_s,
                    "success_pct": res.success_pct,
                }
            else:
                figures = res.figures()
                if not stream:
                    figures.pop("ttft_p50_ms")  # a whole answer has no first token to time
                    figures.pop("events_per_answer")
                cpu1 = cpu_seconds(pid) if pid is not None else None
                if cpu0 is not None and cpu1 is not None and res.completion_tokens:
                    figures["cpu_ms_per_token"] = 1000 * (cpu1 - cpu0) / res.completion_tokens
                if res.completion_tokens:  # the other side of each token: the client's parse
                    figures["client_cpu_ms_per_token"] = 1000 * client_s / res.completion_tokens
            rec.add("serve", case, target, figures)
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
    if b.seed_levels:
        for case, values in SEED_FIGURES.items():
            for metric, value in values.items():
                rec.set_seed("serve", case, metric, value)
    return first.texts.get(0, "")
