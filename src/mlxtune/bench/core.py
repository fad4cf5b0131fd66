"""What every bench workload shares: the figures and their arithmetic (median, spread, ratio),
the result, the list of sides to run, the environment record and the filler text prompts use."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlxtune import __version__
from mlxtune.config import BENCH_SECTIONS
from mlxtune.provenance import git_commit, package_version
from mlxtune.runtime import blas_status

Progress = Callable[[str], None]
Target = Literal["mlxtune", "mlx-lm"]
SCHEMA_VERSION = 1
SECTIONS = BENCH_SECTIONS


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


def paired_ratios(mlxtune: list[float], baseline: list[float]) -> list[float]:
    """mlxtune / baseline repeat by repeat: the suite interleaves the sides, so repeat i of
    each ran under the same load."""
    return [a / b for a, b in zip(mlxtune, baseline, strict=False) if b]


def targets(baseline: str) -> list[Target]:
    """The sides to run, in the order each repeat interleaves them."""
    return ["mlxtune", "mlx-lm"] if baseline == "mlx-lm" else ["mlxtune"]


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
    seed: float | None = None  # the seed project's own figure for this case, where it has one

    @property
    def ratio(self) -> float | None:
        return ratio(self.mlxtune, self.baseline)

    @property
    def ratios(self) -> dict[str, float] | None:
        """min / median / max of the per-repeat ratios."""
        return summarize(paired_ratios(self.mlxtune, self.baseline))

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
            "ratios": self.ratios,
            "seed": self.seed,
        }


# metric -> (unit, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "it_per_s": ("it/s", True),
    "tokens_per_s": ("tok/s", True),
    "timed_tokens": ("tok", True),  # trained tokens in the timed steps: ratio 1.00 = same work
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
    "wall_ms": ("ms", False),
    "cpu_s": ("s", False),
    # embed (seed 002's load test)
    "load_s": ("s", False),
    "mean_ms": ("ms", False),
    "p50_ms": ("ms", False),
    "p95_ms": ("ms", False),
    "success_pct": ("%", True),
    "qps": ("req/s", True),
    "refusal_max_ms": ("ms", False),  # a 503 on the client's clock (its event loop included)
    "refusal_server_max_ms": ("ms", False),  # the same 503's Server-Timing: the server's part
    "throughput_ratio": ("x", True),
    "format_compliance": ("share", True),
    "requests_per_s": ("req/s", True),
    "health_ms": ("ms", False),
    "cpu_ms_per_token": ("ms", False),
    "client_cpu_ms_per_token": ("ms", False),  # the bench's own clients, on the same machine
    "events_per_answer": ("events", False),  # SSE events a streamed answer took
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
        from mlxtune.bench.targets import target_rows

        return {
            "schema_version": SCHEMA_VERSION,
            "what": self.what,
            "baseline": self.baseline,
            "repeat": self.repeat,
            "settings": self.settings,
            "environment": self.environment,
            "figures": [f.to_dict() for f in self.figures],
            "targets": target_rows(self),
            "notes": self.notes,
        }


class Recorder:
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

    def set_seed(self, section: str, case: str, metric: str, value: float) -> None:
        """The seed project's figure beside a measured one (ignored when it was not measured)."""
        fig = self.figures.get((section, case, metric))
        if fig is not None:
            fig.seed = value


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
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
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


def filler(i: int) -> str:
    """Deterministic, varied prompt text (row `i`), shared by the generate and serve workloads."""
    words = ["the", "model", "reads", "a", "long", "question", "about", "tools", "data"]
    return " ".join(f"{words[(i + k) % len(words)]}{(i * 7 + k) % 13}" for k in range(64))
