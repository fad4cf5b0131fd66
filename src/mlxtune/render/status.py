"""`mlxtune status`: one table per part (machine, data, runs, server, graph)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mlxtune.status import RunSummary, StatusResult


def age(seconds: float) -> str:
    """3 s, 12 min, 5 h, 2 d: how long ago, at a glance."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _run_line(run: RunSummary) -> str:
    parts = [f"[bold]{escape(run.name)}[/bold] {run.status}"]
    if run.steps is not None:
        parts.append(f"{run.steps} steps")
    if run.val_loss is not None:
        parts.append(f"val loss {run.val_loss:.3f}")
    if run.keyword_accuracy is not None:
        parts.append(f"keyword accuracy {run.keyword_accuracy:.0%}")
    if run.aliases:
        parts.append("@" + ", @".join(run.aliases))
    if run.started_at:
        parts.append(f"started {run.started_at}")
    return ", ".join(parts)


def print_status(console: Console, result: StatusResult) -> None:
    table = Table(title="mlxtune status", show_header=False)
    table.add_column("part", style="bold")
    table.add_column("state")
    memory = f"{result.memory_bytes / 2**30:.1f} GiB" if result.memory_bytes else "unknown"
    device = result.device or "[red]mlx failed to run (mlxtune doctor)[/red]"
    table.add_row("machine", f"{device}, memory {memory}")
    table.add_row("config", escape(result.config or "(none: defaults)"))
    table.add_row("sources", ", ".join(result.source_kinds) or "(none configured)")

    data = result.data
    if data.problem:
        table.add_row("data", f"[red]{escape(data.problem)}[/red]")
    elif not data.prepared:
        table.add_row("data", f"{escape(data.dir)}: not prepared (mlxtune prepare)")
    else:
        splits = ", ".join(f"{s} {n}" for s, n in data.splits.items())
        when = f", prepared {age(data.age_s)} ago" if data.age_s is not None else ""
        kinds = f", from {', '.join(data.source_kinds)}" if data.source_kinds else ""
        table.add_row("data", f"{escape(data.dir)}: {splits} ({data.read} read{kinds}){when}")
        funnel = data.funnel
        if funnel.get("kept_by_quality") is not None or funnel.get("augmented"):
            steps = [f"{funnel.get('extracted')} extracted"]
            if funnel.get("kept_by_quality") is not None:
                steps.append(f"{funnel['kept_by_quality']} kept by quality")
            steps.append(f"{funnel.get('kept')} kept")
            if funnel.get("augmented"):
                steps.append(f"+{funnel['augmented']} augmented")
            table.add_row("funnel", " -> ".join(steps))

    runs = result.runs
    if runs.problem:
        table.add_row("runs", f"[red]{escape(runs.problem)}[/red]")
    elif not runs.count:
        table.add_row("runs", f"{escape(runs.runs_dir)}: none yet (mlxtune train)")
    else:
        table.add_row("runs", f"{runs.count} in {escape(runs.runs_dir)}")
        if runs.latest:
            table.add_row("  latest", _run_line(runs.latest))
        if runs.best:
            table.add_row("  best", _run_line(runs.best))
    aliases = ", ".join(f"@{a} -> {r}" for a, r in runs.aliases.items())
    table.add_row("aliases", escape(aliases) if aliases else "none (mlxtune runs promote NAME)")

    server = result.server
    if server.state == "up" and "adapters" not in server.detail:
        table.add_row("server", f"[green]up[/green] {server.url} (details need serve.api_key)")
    elif server.state == "up":
        d = server.detail
        models = ", ".join(str(a) for a in d.get("adapters") or []) or "base only"
        table.add_row(
            "server",
            f"[green]up[/green] {server.url} ({models}; up {age(float(d.get('uptime_s', 0)))}, "
            f"{d.get('queue_depth', 0)} queued)",
        )
    elif server.state == "unhealthy":
        error = server.detail.get("error") or server.problem
        table.add_row("server", f"[red]unhealthy[/red] {server.url}: {escape(str(error))}")
    elif server.state == "skipped":
        table.add_row("server", escape(server.problem or ""))
    else:
        table.add_row("server", f"none on {server.url}")

    for graph in result.graphs:
        name = graph.uri + (f" ({graph.database})" if graph.database else "")
        if graph.labels is not None:
            counts = ", ".join(f"{label} {n}" for label, n in graph.labels.items()) or "empty"
            table.add_row("graph", f"{escape(name)}: {counts}")
        else:
            table.add_row("graph", f"[yellow]{escape(graph.problem or name)}[/yellow]")
    console.print(table)
