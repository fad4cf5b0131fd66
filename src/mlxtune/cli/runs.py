"""`mlxtune runs list|show|compare|promote|rollback|history`, `report` and `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlxtune.cli.common import (
    ConfigOpt,
    JsonOpt,
    SetOpt,
    console,
    err_console,
    handles_errors,
    resolve,
)

app = typer.Typer(
    help="The run registry: list, show, compare, promote and roll back runs.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as the root app's (start-up)
)

AliasOpt = Annotated[
    str, typer.Option("--as", help="Alias to point at the run (serve it as '@ALIAS').")
]


@app.command("list")
@handles_errors
def runs_list(config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Every run in train.runs_dir, indexed in the registry (rescanned each time)."""
    from mlxtune.render.output import write_json
    from mlxtune.render.runs import runs_table
    from mlxtune.runs import list_runs

    cfg = resolve(config, set_)
    records = list_runs(cfg)
    if json_:
        write_json([r.to_dict() for r in records])
    elif not records:
        console.print(
            f"no runs in {cfg.train.runs_dir.resolve()} (train.runs_dir): run mlxtune train, "
            "or point at your runs with -c CONFIG or --set train.runs_dir=DIR",
            markup=False,
        )
    else:
        console.print(runs_table(records, cfg.train.runs_dir))


@app.command("show")
@handles_errors
def runs_show(
    name: Annotated[str, typer.Argument(help="Run name, path or @alias.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One run: lineage, final metrics, a loss sparkline, evaluation and its config."""
    from mlxtune.render.output import write_json
    from mlxtune.render.runs import print_run
    from mlxtune.runs import show_run

    detail = show_run(resolve(config, set_), name)
    if json_:
        write_json(detail.to_dict())
    else:
        print_run(console, detail)


@app.command("compare")
@handles_errors
def runs_compare(
    a: Annotated[str, typer.Argument(help="First run (name, path or @alias).")],
    b: Annotated[str, typer.Argument(help="Second run; deltas are B - A.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Config diff and metric deltas (B - A), overall and per category."""
    from mlxtune.render.output import write_json
    from mlxtune.render.runs import print_comparison
    from mlxtune.runs import compare_runs

    cmp = compare_runs(resolve(config, set_), a, b)
    if json_:
        write_json(cmp.to_dict(), default=str)
    else:
        print_comparison(console, cmp)


@app.command("promote")
@handles_errors
def runs_promote(
    name: Annotated[str, typer.Argument(help="Run to promote (name, path or @alias).")],
    alias: AliasOpt = "current",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point an alias (default 'current') at a run's adapter; the previous target is kept."""
    from mlxtune.runs import promote

    change = promote(resolve(config, set_), name, alias)
    was = f" (was {change.previous})" if change.previous else ""
    console.print(
        f"@{change.alias} -> {change.run}{was}  {change.path}", highlight=False, markup=False
    )


@app.command("rollback")
@handles_errors
def runs_rollback(
    alias: Annotated[str, typer.Argument(help="Alias to move back.")] = "current",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Move an alias back to the run it pointed at before the last promote."""
    from mlxtune.runs import rollback

    change = rollback(resolve(config, set_), alias)
    console.print(
        f"@{change.alias} -> {change.run} (rolled back from {change.previous})  {change.path}",
        highlight=False,
        markup=False,
    )


@app.command("history")
@handles_errors
def runs_history(
    alias: Annotated[str, typer.Argument(help="Alias whose history to show.")] = "current",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every promote and rollback of an alias, oldest first."""
    from mlxtune.render.output import write_json
    from mlxtune.render.runs import alias_history_table
    from mlxtune.runs import alias_history

    events = alias_history(resolve(config, set_), alias)
    if json_:
        write_json([e.to_dict() for e in events])
    else:
        console.print(alias_history_table(alias, events))


@handles_errors
def report(
    name: Annotated[str, typer.Argument(help="Run name, path or @alias.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default <run>/report).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a self-contained HTML report and markdown: loss curves, evaluation, samples."""
    from mlxtune.report import build_report

    with console.status("drawing report"):
        result = build_report(resolve(config, set_), name, out)
    console.print(f"wrote {result.html}", markup=False)
    console.print(f"wrote {result.markdown} (+ {len(result.plots)} plot(s))", markup=False)


@handles_errors
def export(
    name: Annotated[str, typer.Argument(help="Run name, path or @alias.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the fused model.")],
    de_quantize: Annotated[
        bool, typer.Option("--de-quantize", help="Write full-precision weights.")
    ] = False,
    gguf: Annotated[
        bool, typer.Option("--gguf", help="Also write GGUF (llama, mistral, mixtral only).")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fuse a run's adapter into a standalone model that mlx_lm.load (and serve) can load."""
    from mlxtune.export import export_run

    cfg = resolve(config, set_)
    with console.status(f"fusing {name}"):
        result = export_run(cfg, name, out, dequantize=de_quantize, gguf=gguf, force=force)
    layers = f"{result.fused_layers} adapter layers" if result.fused_layers else "full weights"
    console.print(
        f"wrote {result.out}: {result.run} fused into {result.base_model} "
        f"({layers}{', de-quantized' if result.dequantized else ''})",
        markup=False,
    )
    if result.gguf:
        console.print(f"wrote {result.gguf}", markup=False)
    if result.agreement is not None:
        same, total = result.agreement
        measured = (
            f"{same}/{total} greedy test answers are identical to the run's"
            if total
            else "no test split found to measure how much"
        )
        err_console.print(
            f"note: fusing into quantized weights rounds the adapter: {measured} "
            "(--de-quantize keeps full precision)",
            markup=False,
        )
