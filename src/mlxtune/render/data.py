"""`mlxtune prepare` and `validate-format`: counts per step, split and category; problems and
rendered examples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    print_funnel(console, result.manifest)
    lengths = result.manifest["token_lengths"]["all"]
    console.print(
        f"tokens p50 {lengths['p50']}, p95 {lengths['p95']}, max {lengths['max']} "
        f"(max_seq_length {result.manifest['max_seq_length']}); "
        f"template {result.manifest['template']['fingerprint']}; {result.wall_s:.1f} s"
    )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def print_funnel(console: Console, manifest: dict[str, Any]) -> None:
    """Extracted -> kept by quality -> augmented -> per split, and what quality dropped for,
    when quality scoring or augmentation ran (otherwise the steps table says it all)."""
    funnel, quality = manifest.get("funnel") or {}, manifest.get("quality")
    augment = manifest.get("augment")
    if not quality and not augment:
        return
    table = Table(title="funnel", show_header=True)
    table.add_column("stage")
    table.add_column("rows", justify="right")
    table.add_column("note")
    table.add_row("extracted", str(funnel.get("extracted")), "")
    if quality:
        table.add_row("scored", str(quality["scored"]), "after cleaning and dedup")
        factors = ", ".join(f"{f} {n}" for f, n in quality["dropped_by_factor"].items() if n)
        note = f"threshold {quality['threshold']}" + (f"; short on: {factors}" if factors else "")
        table.add_row("kept by quality", str(quality["kept"]), note)
    table.add_row("kept", str(funnel.get("kept")), "after the token-length filter")
    if augment:
        dropped = augment["duplicates_dropped"] + augment["empty_dropped"]
        dropped += augment["too_long_dropped"]
        note = f"{augment['method']} x{augment['factor']} on {', '.join(augment['splits'])}"
        table.add_row("augmented", f"+{funnel.get('augmented', 0)}", note + f"; {dropped} dropped")
    for split, n in (funnel.get("splits") or {}).items():
        table.add_row(f"[bold]{split}[/bold]", str(n), "")
    console.print(table)
    if quality:
        counts = quality["histogram"]["counts"]
        bars = " ".join(str(c) for c in counts)
        console.print(f"quality histogram (0.0 .. 1.0, 10 bins): {bars}", highlight=False)


def print_explain(console: Console, result: PrepareResult, n: int) -> None:
    """N records the quality threshold dropped: where, score, each factor (the ones that cost
    it in red), then the question and answer, clipped. One block per record: fits any width."""
    if not result.quality_dropped:
        console.print("no records were dropped by quality (prepare.quality unset or all kept)")
        return
    shown = result.quality_dropped[:n]
    console.rule(f"dropped by quality: {len(shown)} of {len(result.quality_dropped)}")
    for d in shown:
        factors = "  ".join(
            f"[red]{f} {v:.2f}[/red]" if v < 1 else f"{f} {v:.2f}" for f, v in d.factors.items()
        )
        console.print(f"[bold]{escape(d.where)}[/bold]  score {d.score:.2f}", highlight=False)
        console.print(f"  {factors}", highlight=False)
        question, answer = _question_answer(d.record)
        console.print(f"  Q: {escape(_clip(question))}", highlight=False)
        console.print(f"  A: {escape(_clip(answer))}", highlight=False)


def _question_answer(record: dict[str, Any]) -> tuple[str, str]:
    messages = record.get("messages") or []
    user = [m["content"] for m in messages if m.get("role") == "user"]
    answer = messages[-1]["content"] if messages else str(record.get("text", ""))
    return (user[-1] if user else ""), answer


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
