"""`mlxtune bench`: speed and memory figures, each beside raw mlx-lm on the same workload.

Three workloads, each run as mlxtune and (with baseline="mlx-lm") as raw mlx-lm, interleaved
A B A B so a noisy machine slows both sides alike and the ratio stays honest:
- train:    `mlxtune train --json` vs `mlx_lm lora`, both subprocesses, same data and settings;
- generate: in process through load_model + encode_prompt + stream/batch_generate,
            vs `mlx_lm benchmark` as a subprocess;
- serve:    `mlxtune serve` vs `mlx_lm.server`, both driven over loopback by the same client.
Nothing here prints; progress goes through the `progress` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlxtune import __version__
from mlxtune.errors import MlxtuneError
from mlxtune.provenance import git_commit, package_version
from mlxtune.runtime import blas_status, subprocess_env, wait_until_ready
from mlxtune.stats import percentile

if TYPE_CHECKING:
    from mlxtune.config import Config

Progress = Callable[[str], None]
Target = Literal["mlxtune", "mlx-lm"]
SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Results


def summarize(values: list[float]) -> dict[str, float] | None:
    """min / median / max of the repeats (None when nothing was measured)."""
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def ratio(mlxtune: list[float], baseline: list[float]) -> float | None:
    """mlxtune / baseline on the medians; >1 means mlxtune's figure is larger."""
    if not mlxtune or not baseline:
        return None
    b = statistics.median(baseline)
    return statistics.median(mlxtune) / b if b else None


@dataclass
class Figure:
    """One measured quantity for one case, every repeat, on both sides."""

    section: str  # train | generate | serve
    case: str  # e.g. "p=32 b=1", "c=4", "sustained"
    metric: str  # e.g. tokens_per_s
    unit: str
    higher_is_better: bool
    mlxtune: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return ratio(self.mlxtune, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "case": self.case,
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "mlxtune": {"values": self.mlxtune, **(summarize(self.mlxtune) or {})},
            "baseline": {"values": self.baseline, **(summarize(self.baseline) or {})},
            "ratio": self.ratio,
        }


# metric -> (unit, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "it_per_s": ("it/s", True),
    "tokens_per_s": ("tok/s", True),
    "prompt_tps": ("tok/s", True),
    "generation_tps": ("tok/s", True),
    "ttft_ms": ("ms", False),
    "ttft_measured_ms": ("ms", False),
    "completion_tps": ("tok/s", True),
    "latency_p50_ms": ("ms", False),
    "latency_p95_ms": ("ms", False),
    "latency_p99_ms": ("ms", False),
    "ttft_p50_ms": ("ms", False),
    "ok": ("req", True),
    "errors": ("req", False),
    "n503": ("req", False),
    "peak_memory_gb": ("GB", False),
    "max_rss_mb": ("MB", False),
    "wall_s": ("s", False),
}


@dataclass
class BenchResult:
    what: list[str]
    baseline: str
    repeat: int
    figures: list[Figure]
    environment: dict[str, Any]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def figure(self, section: str, case: str, metric: str) -> Figure | None:
        return next(
            (f for f in self.figures if (f.section, f.case, f.metric) == (section, case, metric)),
            None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "what": self.what,
            "baseline": self.baseline,
            "repeat": self.repeat,
            "settings": self.settings,
            "environment": self.environment,
            "figures": [f.to_dict() for f in self.figures],
            "notes": self.notes,
        }


class _Recorder:
    """Collects one measurement at a time into Figures, keeping first-seen order."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str, str], Figure] = {}

    def add(self, section: str, case: str, target: Target, values: dict[str, float | None]) -> None:
        for metric, value in values.items():
            if value is None:
                continue
            unit, higher = METRICS[metric]
            key = (section, case, metric)
            fig = self.figures.setdefault(key, Figure(section, case, metric, unit, higher))
            (fig.mlxtune if target == "mlxtune" else fig.baseline).append(float(value))


# ---------------------------------------------------------------------------------------------
# Environment and processes


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """What a reader needs to compare two bench files: versions, device, BLAS, threads, load."""
    import mlx.core as mx

    env_threads = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        if k in os.environ
    }
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "mlxtune": __version__,
            "mlx": package_version("mlx"),
            "mlx_lm": package_version("mlx-lm"),
            "python": platform.python_version(),
        },
        "device": str(mx.default_device()),
        "blas": blas_status(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads_env": env_threads,
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "hostname": platform.node(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "loadavg_start": list(os.getloadavg()),
    }


def child_config_yaml(cfg: Config) -> str:
    """The resolved config for a child process: only the keys that were set (by file, --set or
    flag), so defaults stay defaults and pairs like lora_alpha/lora_scale do not both appear."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a live process from /proc (no psutil)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


@dataclass
class ChildRun:
    returncode: int
    lines: list[str]
    max_rss_mb: float | None
    wall_s: float
    timed_out: bool


def _cli_cmd() -> list[str]:
    return [sys.executable, "-m", "mlxtune"]


def _child_env() -> dict[str, str]:
    env = subprocess_env()
    # Children must import this mlxtune (the worktree's src), not whatever else is installed.
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_child(
    cmd: list[str],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
) -> ChildRun:
    """Run a command to completion, collecting its merged output; bounded by `timeout`.
    Its max RSS is VmHWM sampled from /proc while it runs: getrusage/wait4 would report at least
    this (large) process's size, since a forked child keeps the parent's high-water mark."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_child_env(),
        cwd=cwd,
        start_new_session=True,
    )
    lines: list[str] = []
    timed_out = threading.Event()
    done = threading.Event()
    hwm: list[float] = []

    def _kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)

    def _sample() -> None:
        while not done.wait(0.1):
            if (v := _vm_hwm_mb(proc.pid)) is not None:
                hwm.append(v)

    timer = threading.Timer(timeout, _kill)
    sampler = threading.Thread(target=_sample, daemon=True)
    timer.start()
    sampler.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if on_line:
                on_line(line)
        proc.wait()
    finally:
        done.set()
        timer.cancel()
        if proc.returncode is None:
            _kill()
            proc.wait()
    sampler.join()
    rss = max(hwm) if hwm else None
    return ChildRun(proc.returncode, lines, rss, time.perf_counter() - t0, timed_out.is_set())


def _tail(lines: list[str], n: int = 5) -> str:
    return " | ".join(line.strip() for line in lines[-n:] if line.strip())[-400:]


# ---------------------------------------------------------------------------------------------
# train


def train_schedule(warmup: int, steps: int) -> tuple[int, int]:
    """(total iterations, steps per report) so report intervals end exactly where warm-up ends."""
    every = gcd(warmup, steps) if warmup else steps
    return warmup + steps, every


def aggregate_train(reports: list[dict[str, float]], warmup: int, every: int) -> dict[str, float]:
    """Time-weighted it/s and tokens/s over the intervals after warm-up; peak memory overall.
    Each report is {"step", "it_per_s", "tokens_per_s", "peak_memory_gb"?} for `every` steps."""
    timed = [r for r in reports if r["step"] > warmup and r.get("it_per_s")]
    if not timed:
        raise MlxtuneError("bench: training reported no intervals after warm-up")
    seconds = [every / r["it_per_s"] for r in timed]
    total_s = sum(seconds)
    tokens = sum(r["tokens_per_s"] * s for r, s in zip(timed, seconds, strict=True))
    out = {"it_per_s": every * len(timed) / total_s, "tokens_per_s": tokens / total_s}
    peaks = [r["peak_memory_gb"] for r in reports if r.get("peak_memory_gb") is not None]
    if peaks:
        out["peak_memory_gb"] = max(peaks)
    return out


# A wrapper around raw `mlx_lm lora` that only listens: it swaps the (unused) reporting
# callback for one that prints mlx-lm's own per-interval figures as JSON, then runs lora's main.
_LORA_SHIM = r"""
import json, sys
import mlx.core as mx
import mlx_lm.lora as lora
from mlx_lm.tuner.trainer import TrainingCallback

class _Report(TrainingCallback):
    def on_train_loss_report(self, info):
        print("MLXTUNE_BENCH " + json.dumps({
            "step": info["iteration"], "it_per_s": info["iterations_per_second"],
            "tokens_per_s": info["tokens_per_second"], "peak_memory_gb": info["peak_memory"],
        }), flush=True)

lora.get_reporting_callbacks = lambda *a, **k: _Report()
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
"""

# Older mlx-lm prints "Iter 10: Train loss 2.1, ..., It/sec 1.2, Tokens/sec 300.1, ...,
# Peak mem 1.2 GB"; kept as a fallback so the parser survives an mlx-lm downgrade.
_OLD_REPORT = re.compile(
    r"Iter (\d+): Train loss [\d.]+.*?It/sec ([\d.]+), Tokens/sec ([\d.]+).*?Peak mem ([\d.]+)"
)


def parse_lora_output(lines: list[str]) -> list[dict[str, float]]:
    reports = []
    for line in lines:
        if line.startswith("MLXTUNE_BENCH "):
            reports.append(json.loads(line.split(" ", 1)[1]))
        elif m := _OLD_REPORT.search(line):
            reports.append(
                {
                    "step": int(m[1]),
                    "it_per_s": float(m[2]),
                    "tokens_per_s": float(m[3]),
                    "peak_memory_gb": float(m[4]),
                }
            )
    return reports


def parse_train_json(lines: list[str]) -> list[dict[str, float]]:
    """`mlxtune train --json` event lines -> the same report shape as the lora shim's."""
    reports = []
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "train" and ev.get("it_per_s"):
            reports.append(
                {
                    "step": ev["step"],
                    "it_per_s": ev["it_per_s"],
                    # mlx-lm counts trained (unmasked) tokens; compare like with like
                    "tokens_per_s": ev.get("trained_tokens_per_s") or ev.get("tokens_per_s") or 0.0,
                    "peak_memory_gb": ev.get("peak_memory_gb"),
                }
            )
    return reports


def _check_data(cfg: Config) -> Path:
    data = Path(cfg.data.dir)
    for split in ("train", "valid"):
        if not (data / f"{split}.jsonl").is_file():
            raise MlxtuneError(
                f"data.dir: {data / (split + '.jsonl')} not found (run mlxtune prepare first)"
            )
    return data


def _num_layers(cfg: Config) -> int:
    """train.num_layers, clamped to the model's depth (mlx-lm rejects more layers than exist)."""
    n = cfg.train.num_layers
    with contextlib.suppress(OSError, ValueError, KeyError):
        model_cfg = json.loads((Path(cfg.model.path) / "config.json").read_text())
        depth = int(
            model_cfg.get("num_hidden_layers") or model_cfg["text_config"]["num_hidden_layers"]
        )
        if n > depth:
            return -1
    return n


def train_command(cfg: Config, target: Target, out: Path) -> list[str]:
    """The command for one timed training run, files it needs written under `out`. Both sides
    get the same model, data, steps, report interval and hyper-parameters; features raw mlx-lm
    lacks (packing, grad clipping, schedules, early stopping) are turned off on mlxtune's side."""
    b, t = cfg.bench, cfg.train
    iters, every = train_schedule(b.warmup_steps, b.train_steps)
    if target == "mlx-lm":
        import yaml

        lora_parameters: dict[str, Any] = {
            "rank": t.lora_rank,
            "scale": t.effective_lora_scale,
            "dropout": t.lora_dropout,
        }
        if t.lora_keys:
            lora_parameters["keys"] = t.lora_keys
        lora_cfg = {
            "model": cfg.model.path,
            "train": True,
            "data": str(cfg.data.dir),
            "fine_tune_type": t.method,
            "optimizer": t.optimizer,
            "num_layers": _num_layers(cfg),
            "batch_size": t.batch_size,
            "iters": iters,
            "val_batches": 1,
            "learning_rate": t.learning_rate,
            "steps_per_report": every,
            "steps_per_eval": iters + 1,
            "save_every": iters + 1,
            "adapter_path": str(out / "adapters"),
            "max_seq_length": t.max_seq_length,
            "mask_prompt": t.mask_prompt,
            "grad_checkpoint": t.grad_checkpoint,
            "grad_accumulation_steps": t.grad_accumulation_steps,
            "seed": t.seed,
            "lora_parameters": lora_parameters,
        }
        (out / "lora.yaml").write_text(yaml.safe_dump(lora_cfg))
        return [sys.executable, "-c", _LORA_SHIM, "-c", str(out / "lora.yaml")]
    cfg_file = out / "config.yaml"
    cfg_file.write_text(child_config_yaml(cfg))
    sets = {
        "train.iters": iters,
        "train.epochs": "null",
        "train.num_layers": _num_layers(cfg),
        "train.steps_per_report": every,
        "train.steps_per_eval": iters + 1,
        "train.save_every": iters + 1,
        "train.val_batches": 1,
        "train.runs_dir": str(out / "runs"),
        "train.name": "bench",
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.packing": "false",
        "train.grad_clip": "null",
        "train.early_stopping_patience": "null",
    }
    cmd = [*_cli_cmd(), "train", "-c", str(cfg_file), "--json"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def bench_train_once(
    cfg: Config, target: Target, work: Path, progress: Progress | None = None
) -> dict[str, float | None]:
    """One training run of warmup + train_steps; returns it/s, tokens/s, memory."""
    b = cfg.bench
    _check_data(cfg)
    _, every = train_schedule(b.warmup_steps, b.train_steps)
    out = Path(tempfile.mkdtemp(prefix=f"train-{target}-", dir=work))
    try:
        run = run_child(train_command(cfg, target, out), timeout=b.time_limit_s)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    reports = parse_lora_output(run.lines) if target == "mlx-lm" else parse_train_json(run.lines)
    if run.timed_out:
        raise MlxtuneError(f"bench train ({target}): over bench.time_limit_s={b.time_limit_s:g}s")
    if run.returncode != 0 or not reports:
        raise MlxtuneError(
            f"bench train ({target}): exit {run.returncode}, no timing reports: {_tail(run.lines)}"
        )
    figures: dict[str, float | None] = dict(aggregate_train(reports, b.warmup_steps, every))
    figures["max_rss_mb"] = run.max_rss_mb
    return figures


# ---------------------------------------------------------------------------------------------
# generate


def _filler(i: int) -> str:
    words = ["the", "model", "reads", "a", "long", "question", "about", "tools", "data"]
    return " ".join(f"{words[(i + k) % len(words)]}{(i * 7 + k) % 13}" for k in range(64))


def make_prompts(tokenizer: Any, length: int, batch: int) -> list[list[int]]:
    """`batch` distinct chat prompts of exactly `length` tokens, rendered by formats.encode_prompt.
    Long prompts are cut from the front, so the template's generation suffix stays intact."""
    from mlxtune.formats import encode_prompt

    prompts = []
    for row in range(batch):
        text, ids = "", list[int]()
        while len(ids) < length:
            text += f"Question {row}: " + _filler(row + len(text)) + "\n"
            ids = encode_prompt(tokenizer, [{"role": "user", "content": text}])
        prompts.append(list(ids[-length:]))
    return prompts


def _generate_once(
    model: Any, tokenizer: Any, prompts: list[list[int]], gen_tokens: int
) -> dict[str, float | None]:
    import mlx.core as mx
    from mlx_lm import batch_generate, stream_generate

    mx.reset_peak_memory()
    if len(prompts) == 1:
        t0 = time.perf_counter()
        first: float | None = None
        last = None
        for response in stream_generate(model, tokenizer, prompts[0], max_tokens=gen_tokens):
            if first is None:
                first = time.perf_counter() - t0
            last = response
        assert last is not None
        prompt_tps, gen_tps, peak = last.prompt_tps, last.generation_tps, last.peak_memory
    else:
        stats = batch_generate(model, tokenizer, prompts, max_tokens=gen_tokens).stats
        prompt_tps, gen_tps, peak = stats.prompt_tps, stats.generation_tps, stats.peak_memory
        first = None
    n_prompt = sum(len(p) for p in prompts)
    return {
        "prompt_tps": prompt_tps,
        "generation_tps": gen_tps,
        # The same definition for both sides: prompt processing time, from prompt_tps.
        "ttft_ms": 1000 * n_prompt / prompt_tps if prompt_tps else None,
        "ttft_measured_ms": 1000 * first if first is not None else None,
        "peak_memory_gb": peak,
    }


_BENCH_AVERAGES = re.compile(
    r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+), peak_memory=([\d.]+)"
)


def parse_mlx_benchmark(lines: list[str]) -> dict[str, float]:
    for line in lines:
        if m := _BENCH_AVERAGES.search(line):
            return {
                "prompt_tps": float(m[1]),
                "generation_tps": float(m[2]),
                "peak_memory_gb": float(m[3]),
            }
    raise MlxtuneError(f"bench generate (mlx-lm): no 'Averages:' line: {_tail(lines)}")


def _baseline_generate(cfg: Config, length: int, batch: int) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "mlx_lm", "benchmark",
        "--model", cfg.model.path,
        "-p", str(length), "-g", str(cfg.bench.gen_tokens), "-b", str(batch),
        "-n", str(cfg.bench.trials),
    ]  # fmt: skip
    run = run_child(cmd, timeout=cfg.bench.time_limit_s)
    if run.timed_out:
        raise MlxtuneError(f"bench generate (mlx-lm): over bench.time_limit_s={run.wall_s:.0f}s")
    if run.returncode != 0:
        raise MlxtuneError(f"bench generate (mlx-lm): exit {run.returncode}: {_tail(run.lines)}")
    out = parse_mlx_benchmark(run.lines)
    out["ttft_ms"] = 1000 * length * batch / out["prompt_tps"] if out["prompt_tps"] else 0.0
    if run.max_rss_mb:
        out["max_rss_mb"] = run.max_rss_mb
    return out


def generate_cell(cfg: Config, length: int, batch: int) -> dict[str, float | None]:
    """mlxtune's generation path on one (prompt length, batch) cell: load, warm up with the
    full workload once, then average `bench.trials` timed runs (as mlx_lm benchmark does)."""
    from mlxtune.modeling import load_model

    model, tokenizer, _ = load_model(cfg.model)
    # Fixed lengths need generation past EOS; mlx_lm benchmark does the same.
    tokenizer._eos_token_ids = set()
    prompts = make_prompts(tokenizer, length, batch)
    _generate_once(model, tokenizer, prompts, cfg.bench.gen_tokens)
    runs = [
        _generate_once(model, tokenizer, prompts, cfg.bench.gen_tokens)
        for _ in range(cfg.bench.trials)
    ]
    out: dict[str, float | None] = {}
    for key in runs[0]:
        values = [v for r in runs if (v := r[key]) is not None]
        if not values:
            out[key] = None
        elif key == "peak_memory_gb":
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


# Each cell runs in a fresh process on both sides, so max RSS and warm-up are like for like.
_CELL_MAIN = r"""
import json, sys
from mlxtune.bench import generate_cell
from mlxtune.config import load_config
figs = generate_cell(load_config(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
print("MLXTUNE_BENCH " + json.dumps(figs), flush=True)
"""


def _mlxtune_generate(cfg_file: Path, length: int, batch: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _CELL_MAIN, str(cfg_file), str(length), str(batch)]
    run = run_child(cmd, timeout=timeout)
    line = next((x for x in run.lines if x.startswith("MLXTUNE_BENCH ")), None)
    if run.timed_out or run.returncode != 0 or line is None:
        raise MlxtuneError(f"bench generate (mlxtune): exit {run.returncode}: {_tail(run.lines)}")
    out: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    out["max_rss_mb"] = run.max_rss_mb
    return out


def bench_generate(
    cfg: Config,
    rec: _Recorder,
    targets: list[Target],
    repeat: int,
    progress: Progress,
    work: Path,
) -> None:
    b = cfg.bench
    cfg_file = work / "generate.yaml"
    cfg_file.write_text(child_config_yaml(cfg))
    cells = [(p, bs) for p in b.prompt_lengths for bs in b.batch_sizes]
    for r in range(repeat):
        for p, bs in cells:
            case = f"p={p} b={bs}"
            for target in targets:
                progress(f"generate {case} [{target}] repeat {r + 1}/{repeat}")
                if target == "mlxtune":
                    figs = _mlxtune_generate(cfg_file, p, bs, b.time_limit_s)
                else:
                    figs = dict(_baseline_generate(cfg, p, bs))
                rec.add("generate", case, target, figs)


# ---------------------------------------------------------------------------------------------
# serve: the load driver


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
    client: Any, url: str, body: dict[str, Any], res: LoadResult, timeout: float
) -> None:
    import httpx

    t0 = time.perf_counter()
    first: float | None = None
    tokens = chunks = 0
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
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        res.errors += 1
        if len(res.error_samples) < 3:
            res.error_samples.append(f"{type(e).__name__}: {e}"[:200])
        return
    res.ok += 1
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
) -> LoadResult:
    """Send `requests` streaming chat completions, at most `concurrency` at a time, all within
    `time_limit_s`; requests cut off by the limit count as timed out."""
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
        async with sem:
            await _one_request(client, url, body, res, time_limit_s)

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


# ---------------------------------------------------------------------------------------------
# serve: the server process


class Server:
    """A server subprocess on a free loopback port; always stopped on exit."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.cmd, self.port, self.log = cmd, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.max_rss_mb: float | None = None
        self.peak_memory_gb: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float) -> None:

        self._log_f = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log_f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
            start_new_session=True,
        )
        problem = wait_until_ready(self.proc, self.url + "/health", ready_timeout)
        if problem:
            raise MlxtuneError(f"bench serve: server {problem}: {self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return _tail(self.log.read_text(errors="replace").splitlines())
        return ""

    def scrape_memory(self) -> None:
        """Peak MLX memory, when the server exports it on /metrics (mlxtune serve)."""
        import httpx

        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = httpx.get(self.url + "/metrics", timeout=2)
            if r.status_code == 200:
                for line in r.text.splitlines():
                    name, _, value = line.partition(" ")
                    if "peak_memory" in name and not line.startswith("#"):
                        v = float(value.split()[0])
                        self.peak_memory_gb = v / 1e9 if "bytes" in name else v

    def stop(self) -> None:
        if self.proc is None:
            return
        self.max_rss_mb = _vm_hwm_mb(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self._log_f.close()
        self.proc = None


@contextlib.contextmanager
def running_server(
    cmd_for_port: Callable[[int], list[str]], log: Path, ready_timeout: float
) -> Iterator[Server]:
    port = free_port()
    server = Server(cmd_for_port(port), port, log)
    try:
        server.start(ready_timeout)
        yield server
    finally:
        server.stop()


def _serve_adapter(cfg: Config) -> tuple[str | None, Path | None]:
    """(model name to request, adapter path): the first configured adapter, else the base."""
    if cfg.serve.adapters:
        name, path = next(iter(cfg.serve.adapters.items()))
        return name, Path(path)
    return cfg.serve.base_name, None


def server_command(cfg: Config, target: Target, port: int, work: Path) -> list[str]:
    _, adapter = _serve_adapter(cfg)
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
    return [*_cli_cmd(), "serve", "-c", str(cfg_file), "--port", str(port)]


def serve_prompts(n: int = 16) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Question {i}: " + _filler(i)[:160]}] for i in range(n)]


def bench_serve_once(
    cfg: Config,
    target: Target,
    work: Path,
    rec: _Recorder,
    progress: Progress,
    notes: list[str] | None = None,
) -> None:
    b = cfg.bench
    name, _ = _serve_adapter(cfg)
    model = None if target == "mlx-lm" else name  # mlx_lm.server: no name = the --model it loaded
    key = cfg.serve.resolved_api_key() if target == "mlxtune" else None
    prompts = serve_prompts()
    log = work / f"server-{target}.log"
    with running_server(
        lambda port: server_command(cfg, target, port, work), log, b.time_limit_s
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
        server.scrape_memory()
    rec.add(
        "serve",
        "server",
        target,
        {"max_rss_mb": server.max_rss_mb, "peak_memory_gb": server.peak_memory_gb},
    )


# ---------------------------------------------------------------------------------------------
# The core entry point


def bench(
    cfg: Config,
    *,
    what: str | None = None,
    baseline: str | None = None,
    repeat: int | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure the chosen workloads (`cfg.bench` unless given), interleaving mlxtune and the
    baseline run by run. Raises MlxtuneError when a workload cannot run at all."""
    say: Progress = progress or (lambda _msg: None)
    what = what or cfg.bench.what
    baseline = baseline or cfg.bench.baseline
    repeat = repeat or cfg.bench.repeat
    if what not in ("train", "generate", "serve", "all"):
        raise MlxtuneError(f"--what: expected train, generate, serve or all, got {what!r}")
    if baseline not in ("none", "mlx-lm"):
        raise MlxtuneError(f"--baseline: expected none or mlx-lm, got {baseline!r}")
    if repeat < 1:
        raise MlxtuneError(f"--repeat: must be >= 1, got {repeat}")
    sections = ["train", "generate", "serve"] if what == "all" else [what]
    env = environment()
    rec = _Recorder()
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="mlxtune-bench-"))

    targets: list[Target] = ["mlxtune", "mlx-lm"] if baseline == "mlx-lm" else ["mlxtune"]

    try:
        if what == "all":
            try:
                _check_data(cfg)
            except MlxtuneError as e:  # `all` still times what it can
                sections.remove("train")
                notes.append(f"train skipped: {e}")
        if "train" in sections:
            for r in range(repeat):
                for target in targets:
                    say(f"train [{target}] repeat {r + 1}/{repeat}")
                    rec.add("train", "lora", target, bench_train_once(cfg, target, work, say))
        if "generate" in sections:
            bench_generate(cfg, rec, targets, repeat, say, work)
        if "serve" in sections:
            for r in range(repeat):
                for target in targets:
                    say(f"serve [{target}] repeat {r + 1}/{repeat}")
                    bench_serve_once(cfg, target, work, rec, say, notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["loadavg_end"] = list(os.getloadavg())
    settings = {
        "model": cfg.model.path,
        "bench": cfg.bench.model_dump(mode="json"),
        "train": {
            k: getattr(cfg.train, k)
            for k in (
                "method",
                "batch_size",
                "learning_rate",
                "lora_rank",
                "num_layers",
                "max_seq_length",
                "mask_prompt",
                "grad_checkpoint",
            )
        },
        "data_dir": str(cfg.data.dir),
        "serve_adapter": _serve_adapter(cfg)[0],
    }
    return BenchResult(
        what=sections,
        baseline=baseline,
        repeat=repeat,
        figures=list(rec.figures.values()),
        environment=env,
        settings=settings,
        notes=notes,
    )
