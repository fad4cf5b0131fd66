"""`mlxtune bench`: one row per figure, median (min–max), beside the baseline with the ratio."""

from __future__ import annotations

from statistics import median
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mlxtune.bench import BenchResult, Figure


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def _spread(values: list[float]) -> str:
    """The median, and (min–max) when there was more than one run."""
    if not values:
        return "-"
    if len(values) == 1:
        return _num(values[0])
    return f"{_num(median(values))} [dim]({_num(min(values))}–{_num(max(values))})[/dim]"


def _ratio(fig: Figure) -> str:
    """mlxtune / baseline: green within 5% of the baseline or better, yellow otherwise."""
    r = fig.ratio
    if r is None:
        return "-"
    good = r >= 0.95 if fig.higher_is_better else r <= 1.05
    spread = fig.ratios
    per_repeat = (
        f" [dim]({spread['min']:.2f}–{spread['max']:.2f})[/dim]"
        if spread and spread["n"] > 1
        else ""
    )
    return f"[{'green' if good else 'yellow'}]{r:.2f}x[/]{per_repeat}"


def bench_table(result: BenchResult) -> Table:
    env = result.environment
    table = Table(
        title=f"mlxtune bench · {result.settings['model']} · repeat {result.repeat}",
        caption=(
            f"{env['cpu']} · {env['device']} · mlx {env['versions']['mlx']} · "
            f"mlx-lm {env['versions']['mlx_lm']} · load {env['loadavg_start'][0]:.1f}"
            " · median (min–max); ratio of medians (min–max of the per-repeat ratios)"
        ),
    )
    for col in ("what", "case", "metric", "mlxtune"):
        table.add_column(col, justify="right" if col == "mlxtune" else "left")
    has_baseline = result.baseline != "none"
    if has_baseline:
        table.add_column(result.baseline, justify="right")
        table.add_column("ratio", justify="right")
    has_seed = any(f.seed is not None for f in result.figures)
    if has_seed:
        table.add_column("seed", justify="right")
    for fig in result.figures:
        row = [fig.section, fig.case, f"{fig.metric} ({fig.unit})", _spread(fig.mlxtune)]
        if has_baseline:
            row += [_spread(fig.baseline), _ratio(fig)]
        if has_seed:
            row.append(_num(fig.seed))
        table.add_row(*row)
    return table


def print_bench(console: Console, result: BenchResult) -> None:
    console.print(bench_table(result))
    if "embed" in result.what:
        from mlxtune.bench.embed import target_rows

        table = Table(title="embed vs the seed service's targets")
        for col in ("figure", "measured", "target", "met"):
            table.add_column(col)
        for label, value, target, met in target_rows(result):
            verdict = "-" if met is None else "[green]yes[/]" if met else "[red]no[/]"
            table.add_row(label, _num(value), target, verdict)
        console.print(table)
    from mlxtune.bench.targets import target_rows as speed_targets

    if rows := speed_targets(result):
        table = Table(title="issue 18's speed targets (ratio = mlxtune / mlx-lm)")
        for col in ("target", "median", "per repeat", "goal", "met"):
            table.add_column(col, justify="left" if col == "target" else "right")
        for row in rows:
            spread = f"{_num(row['min'])}–{_num(row['max'])}" if row["n"] > 1 else "-"
            unit = "x" if row["unit"] == "x" else f" {row['unit']}"
            verdict = "[green]yes[/]" if row["met"] else "[red]no[/]"
            table.add_row(
                row["target"], f"{_num(row['median'])}{unit}", spread, row["goal"], verdict
            )
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False)
