"""Issue 18's speed targets, read off a bench result: one row per target that was measured,
with the median figure, the spread of the per-repeat figures and whether the median meets it.
Ratios are mlxtune / raw mlx-lm (for times, below 1 is faster)."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlxtune.bench.core import BenchResult

Kind = Literal["ratio", "value"]
DATA_TARGET_ROWS = 100_000  # the data targets are for this many rows; fewer say nothing


@dataclass(frozen=True)
class Target:
    label: str
    section: str
    case: str
    metric: str
    kind: Kind  # "ratio": mlxtune / mlx-lm; "value": mlxtune's own figure
    op: Literal[">=", "<="]
    bound: float


def _targets() -> list[Target]:
    out = [
        Target("train it/s", "train", "lora", "it_per_s", "ratio", ">=", 1.3),
        Target("train trained tokens/s", "train", "lora", "tokens_per_s", "ratio", ">=", 1.3),
        # 1.3x as fast as a whole command: the wall-time ratio at most 1/1.3
        Target("train whole command, wall", "train", "lora", "wall_s", "ratio", "<=", 1 / 1.3),
    ]
    for mode in ("stream", "non-stream"):
        out += [
            Target(f"serve {mode}, 16 clients, tok/s", "serve", f"{mode} c=16",
                   "completion_tps", "ratio", ">=", 1.5),
            Target(f"serve {mode}, 16 clients, p95", "serve", f"{mode} c=16",
                   "latency_p95_ms", "ratio", "<=", 1.0),
            Target(f"serve {mode}, 1 client, tok/s", "serve", f"{mode} c=1",
                   "completion_tps", "ratio", ">=", 1.0),
        ]  # fmt: skip
    out += [
        Target("validate-format, prepared", "data", "validate-format", "wall_s", "value", "<=", 15),
        Target("prepare", "data", "prepare", "wall_s", "value", "<=", 25),
        Target("mlxtune --help", "startup", "--help", "wall_ms", "value", "<=", 150),
        Target("slowest verb --help", "startup", "slowest verb --help", "wall_ms", "value", "<=",
               150),
    ]  # fmt: skip
    return out


TARGETS = _targets()


def target_rows(result: BenchResult) -> list[dict[str, Any]]:
    """A row per target this result measured: label, unit, the median and per-repeat min/max
    (of the ratio or the value), the target as text and whether the median meets it."""
    rows = []
    data_rows = result.settings.get("bench", {}).get("data_rows", 0)
    for t in TARGETS:
        if t.section == "data" and data_rows < DATA_TARGET_ROWS:
            continue
        fig = result.figure(t.section, t.case, t.metric)
        if fig is None or not fig.mlxtune:
            continue
        if t.kind == "ratio":
            spread = fig.ratios
            if fig.ratio is None or spread is None:
                continue
            value, low, high, unit = fig.ratio, spread["min"], spread["max"], "x"
        else:
            value, low, high, unit = (
                median(fig.mlxtune),
                min(fig.mlxtune),
                max(fig.mlxtune),
                fig.unit,
            )
        met = value >= t.bound if t.op == ">=" else value <= t.bound
        rows.append(
            {
                "target": t.label,
                "case": f"{t.section} {t.case} {t.metric}",
                "unit": unit,
                "median": value,
                "min": low,
                "max": high,
                "n": len(fig.mlxtune),
                "goal": f"{t.op} {t.bound:.3g}{'x' if t.kind == 'ratio' else ' ' + fig.unit}",
                "met": met,
            }
        )
    return rows
