"""`mlxtune evaluate`: scores per scope and metric (base, adapter, delta), the gate, timing."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mlxtune.eval_report import EvalReport
from mlxtune.metrics import METRICS

PASS = "[green]pass[/green]"
FAIL = "[bold red]FAIL[/bold red]"


def _score(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if signed:
        return (
            f"[green]{text}[/green]" if value > 0 else f"[red]{text}[/red]" if value < 0 else text
        )
    return text


def scores_table(report: EvalReport) -> Table:
    """One section per scope (overall, then categories), a row per metric with a value."""
    has_base = report.has_base
    title = f"evaluate {report.split}: {report.n_examples} examples, {report.labels['adapter']}"
    table = Table(title=title)
    held = report.has_constrained  # the adapter again, decoding under the output schema
    value_cols: tuple[str, ...] = {
        (True, False): ("base", "adapter", "delta"),
        (True, True): ("base", "adapter", "adapter + constrained", "delta"),
        (False, False): ("value",),
        (False, True): ("value", "constrained"),
    }[has_base, held]
    for col in ("category", "n", "metric", *value_cols):
        table.add_column(col, justify="right" if col not in ("category", "metric") else "left")
    blocks = report.blocks()
    for bi, (name, block) in enumerate(blocks):
        base, delta, constrained = block.base or {}, block.delta or {}, block.constrained or {}
        shown = [
            m
            for m in METRICS
            if block.adapter.get(m) is not None or (has_base and base.get(m) is not None)
        ]
        for i, metric in enumerate(shown):
            cells = [name if i == 0 else "", str(block.n) if i == 0 else "", metric]
            if has_base:
                cells += [_score(base.get(metric)), _score(block.adapter.get(metric))]
            else:
                cells.append(_score(block.adapter.get(metric)))
            if held:
                cells.append(_score(constrained.get(metric)))
            if has_base:
                cells.append(_score(delta.get(metric), signed=True))
            table.add_row(*cells, end_section=i == len(shown) - 1 and bi < len(blocks) - 1)
    return table


def gate_table(report: EvalReport) -> Table:
    """Each threshold and guard: what was required, what came out, pass or FAIL."""
    gate = Table(title="gate")
    for col in ("check", "required", "actual", "result"):
        gate.add_column(col)
    for t in report.thresholds:
        op = ">=" if t.kind == "min" else "delta >="
        gate.add_row(t.key, f"{op} {t.value:g}", _score(t.actual), PASS if t.passed else FAIL)
    for g in report.guards:
        gate.add_row(g.name, "-", g.message, PASS if g.passed else FAIL)
    return gate


def print_evaluation(console: Console, report: EvalReport) -> None:
    console.print(scores_table(report))
    if report.thresholds or report.guards:
        console.print(gate_table(report))
    timing = report.timing
    console.print(
        f"{timing.mode} generation (batch {timing.batch_size}): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timing.generate_s.items())
        + f"; total {timing.total_s:.1f}s"
    )
    if report.served_by:
        split = ", ".join(f"{name} {n}" for name, n in sorted(report.served_by.items()))
        console.print(f"answered by: {split}", markup=False)
    verdict = "[green]PASSED[/green]" if report.passed else "[bold red]FAILED[/bold red]"
    console.print(f"gate {verdict}")
