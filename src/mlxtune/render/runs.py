"""`mlxtune runs ...`: the run list, one run's detail, a comparison, an alias's history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlxtune.eval_report import EvalReport

if TYPE_CHECKING:
    from mlxtune.runs import AliasEvent, Comparison, MetricDelta, RunDetail, RunRecord

NUMERIC = ("steps", "val loss", "eval acc")


def num_cell(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _delta_cell(m: MetricDelta) -> str:
    d = m.delta
    if d is None:
        return "–"
    colour = {True: "green", False: "red", None: "white"}[m.better]
    return f"[{colour}]{d:+.4g}[/{colour}]"


def _eval_cell(r: RunRecord) -> str:
    """Keyword accuracy, else token F1 (marked), of the run's evaluation; '–' without one."""
    ev = r.eval_overall
    # keyword_accuracy is None when the data has no keywords (the vision set has none)
    metric = next((m for m in ("keyword_accuracy", "token_f1") if ev.get(m) is not None), None)
    if metric is None:
        return "–"
    return f"{ev[metric]:.3f}" + ("" if metric == "keyword_accuracy" else " f1")


def runs_table(records: list[RunRecord], runs_dir: Path) -> Table:
    table = Table(title=f"runs in {runs_dir}")
    table.add_column("name", no_wrap=True)
    for col in ("status", "method", "base model", "steps", "val loss", "eval acc", "alias"):
        table.add_column(col, justify="right" if col in NUMERIC else "left")
    for r in records:
        table.add_row(
            r.name,
            r.status,
            r.method or "–",
            Path(r.base_model).name if r.base_model else "–",
            num_cell(r.final.get("steps")),
            num_cell(r.final.get("val_loss")),
            _eval_cell(r),
            ", ".join(f"@{a}" for a in r.aliases),
        )
    return table


def _lineage_table(r: RunRecord) -> Table:
    lineage = Table(show_header=False, box=None)
    for k, v in (
        ("method", r.method),
        ("base model", r.base_model),
        ("config hash", r.config_hash),
        ("data manifest", r.data_manifest_sha256),
        ("mlx / mlx-lm", f"{r.mlx_version or '–'} / {r.mlx_lm_version or '–'}"),
        ("git commit", r.git_commit),
        ("started", r.started_at),
        ("finished", r.finished_at),
        ("aliases", ", ".join(f"@{a}" for a in r.aliases)),
    ):
        lineage.add_row(f"[dim]{k}[/dim]", str(v) if v else "–")
    return lineage


def _evaluation_table(report: EvalReport) -> Table:
    """The run's evaluation as scope x metric rows: base, fine-tuned, delta."""
    table = Table(title=f"evaluation ({report.split})")
    for col in ("scope", "metric", "base", "fine-tuned", "delta"):
        table.add_column(col)
    for scope, block in report.blocks(sort=True):
        base, delta = block.base or {}, block.delta or {}
        for metric, value in block.adapter.items():
            d = delta.get(metric)
            table.add_row(
                scope,
                metric,
                num_cell(base.get(metric)),
                num_cell(value),
                f"{d:+.4g}" if isinstance(d, int | float) else "–",
            )
    return table


def print_run(console: Console, detail: RunDetail) -> None:
    """Lineage, loss sparklines, final metrics, evaluation and the run's config."""
    import yaml
    from rich.syntax import Syntax

    from mlxtune.runs import sparkline

    r = detail.record
    console.print(f"[bold]{escape(r.name)}[/bold]  {r.status}  {escape(str(r.path))}")
    if r.status in ("interrupted", "stopped"):
        console.print(f"resume it: mlxtune train --resume {r.path}", markup=False, soft_wrap=True)
    console.print(_lineage_table(r))
    for label, series in (("train loss", detail.train_loss), ("val loss", detail.val_loss)):
        if series:
            vals = [v for _, v in series]
            console.print(
                f"{label:>10}  {vals[0]:.3f} [cyan]{sparkline(vals)}[/cyan] {vals[-1]:.3f}"
                f"  (steps {series[0][0]}–{series[-1][0]})",
                highlight=False,
            )
    if r.final:
        console.print(
            "final: " + ", ".join(f"{k} {num_cell(v)}" for k, v in r.final.items()),
            highlight=False,
        )
    if r.evaluation:
        console.print(_evaluation_table(EvalReport.from_dict(r.evaluation)))
    if detail.config:
        console.print(Syntax(yaml.safe_dump(detail.config, sort_keys=False), "yaml"))


def print_comparison(console: Console, cmp: Comparison) -> None:
    """Config and lineage differences, then metric deltas (B - A; green is better)."""
    diff = Table(title=f"config: {cmp.a.name} vs {cmp.b.name}")
    for col in ("key", cmp.a.name, cmp.b.name):
        diff.add_column(col)
    for key, va, vb in [*cmp.lineage_diff, *cmp.config_diff]:
        diff.add_row(key, json.dumps(va, default=str), json.dumps(vb, default=str))
    if diff.row_count:
        console.print(diff)
    else:
        console.print("config: identical")
    sections = [("training", cmp.training), ("evaluation overall", cmp.overall)]
    sections += [(f"category {c}", ms) for c, ms in cmp.per_category.items()]
    table = Table(title="metrics (delta = B - A; green is better)")
    for col in ("scope", "metric", cmp.a.name, cmp.b.name, "delta"):
        table.add_column(col)
    for scope, metrics in sections:
        for m in metrics:
            table.add_row(scope, m.metric, num_cell(m.a), num_cell(m.b), _delta_cell(m))
    console.print(table)


def alias_history_table(alias: str, events: list[AliasEvent]) -> Table:
    table = Table(title=f"@{alias.removeprefix('@')} history")
    for col in ("at", "action", "run", "previous", "undone"):
        table.add_column(col)
    for e in events:
        table.add_row(e.at, e.action, e.run, e.previous or "–", "yes" if e.undone else "")
    return table
