"""`mlxtune prepare` and `validate-format`: counts per step, split and category; problems and
rendered examples."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mlxtune.data.prepare import PrepareResult
    from mlxtune.data.validate import Example, ValidateResult


def print_prepare(console: Console, err_console: Console, result: PrepareResult) -> None:
    """Rows per filter step and split, per category, token lengths; warnings on stderr."""
    table = Table(title=f"prepare -> {result.out_dir}", show_header=True)
    table.add_column("step")
    table.add_column("rows", justify="right")
    table.add_column("dropped", justify="right")
    table.add_row("read", str(result.read), "")
    for f in result.filters:
        table.add_row(f.name, str(f.after), str(f.dropped) if f.dropped else "")
    for split, n in result.splits.items():
        table.add_row(f"[bold]{split}[/bold]", str(n), "")
    console.print(table)
    if any(result.categories):
        cats = Table(title="per category", show_header=True)
        cats.add_column("category")
        for split in result.splits:
            cats.add_column(split, justify="right")
        for name, counts in result.categories.items():
            cats.add_row(name or "(none)", *(str(counts[s]) for s in result.splits))
        console.print(cats)
    lengths = result.manifest["token_lengths"]["all"]
    console.print(
        f"tokens p50 {lengths['p50']}, p95 {lengths['p95']}, max {lengths['max']} "
        f"(max_seq_length {result.manifest['max_seq_length']}); "
        f"template {result.manifest['template']['fingerprint']}; {result.wall_s:.1f} s"
    )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def print_validation(console: Console, result: ValidateResult, show: int) -> None:
    """Every problem as `file:line: message`, SHOW rendered examples, then the verdict."""
    for problem in result.problems:
        console.print(escape(str(problem)), highlight=False, soft_wrap=True)
    # without colour (a pipe, NO_COLOR) the trained part is marked with «guillemets»
    plain = not console.is_terminal or console.no_color
    for ex in result.examples:
        _print_example(console, ex, plain)
    if show:
        legend = "«trained answer»" if plain else "[bold green]trained answer[/bold green]"
        console.print(f"[dim]masked prompt[/dim]  {legend}")
    files = ", ".join(f"{f.split} {f.rows}" for f in result.files)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts().items())
    if result.ok:
        console.print(
            f"[green]ok[/green] {result.rows} rows ({files}), format {result.format}, "
            f"template {result.template_fingerprint}"
        )
    else:
        console.print(
            f"[red]{len(result.problems)} problem(s)[/red] in {result.rows} rows "
            f"({files}): {counts}"
        )


def _print_example(console: Console, ex: Example, plain: bool) -> None:
    """One rendered example: the masked prompt dim, the trained answer bold (or «marked»)."""
    console.rule(f"{ex.where}: {ex.tokens} tokens, {ex.trained_tokens} trained")
    console.print(
        "".join(
            (f"«{escape(s.text)}»" if plain else f"[bold green]{escape(s.text)}[/bold green]")
            if s.trained
            else f"[dim]{escape(s.text)}[/dim]"
            for s in ex.segments
        ),
        highlight=False,
        soft_wrap=True,
    )
