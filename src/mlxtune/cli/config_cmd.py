"""`mlxtune config show|schema|init|validate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlxtune.cli.common import (
    ConfigOpt,
    SetOpt,
    console,
    err_console,
    escape,
    handles_errors,
    resolve,
)
from mlxtune.errors import UsageError

app = typer.Typer(
    help="Show, check and create config files.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("show")
@handles_errors
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults < file < --set) as YAML."""
    cfg = resolve(config, set_)
    sys.stdout.write(cfg.to_yaml())


@app.command("schema")
@handles_errors
def config_schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to a file.")] = None,
) -> None:
    """Print the JSON Schema of the config, for editors (yaml-language-server)."""
    from mlxtune.config import json_schema
    from mlxtune.io import atomic_write_text

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command("init")
@handles_errors
def config_init(
    out: Annotated[Path, typer.Argument(help="Where to write the starter config.")] = Path(
        "mlxtune.yaml"
    ),
    model: Annotated[str | None, typer.Option(help="Base model path or hub id.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config with every field and its default."""
    from mlxtune.config import starter_yaml
    from mlxtune.io import atomic_write_text

    if out.exists() and not force:
        raise UsageError(f"{out}: already exists (use --force to overwrite)")
    atomic_write_text(out, starter_yaml(model))
    console.print(f"wrote {out}")


@app.command("validate")
@handles_errors
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a config file and report every problem at once."""
    resolve(config, set_)
    console.print(f"[green]ok[/green] {escape(str(config or '(defaults)'))}")


@app.command("import")
@handles_errors
def config_import(
    source: Annotated[Path, typer.Argument(help="An mlx-lm LoRA config (mlx_lm.lora -c FILE).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Convert an mlx-lm LoRA config into a commented mlxtune config; say what did not carry."""
    from mlxtune.config import read_yaml, validate_tree
    from mlxtune.config_import import from_mlx_lm, to_yaml
    from mlxtune.io import atomic_write_text

    imported = from_mlx_lm(read_yaml(source), str(source))
    validate_tree(imported.tree, str(source))  # what it writes must load
    text = to_yaml(imported, str(source))
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        if out.exists() and not force:
            raise UsageError(f"{out}: already exists (use --force to overwrite)")
        atomic_write_text(out, text)
        console.print(f"wrote {out}", markup=False)
    for note in imported.notes:
        err_console.print(f"[yellow]not carried over:[/yellow] {escape(note)}", highlight=False)


@app.command("export")
@handles_errors
def config_export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    mlx_lm: Annotated[
        bool, typer.Option("--mlx-lm", help="As an mlx_lm.lora config (the only format).")
    ] = True,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write the resolved config as an mlx-lm LoRA config (`mlx_lm.lora -c FILE`)."""
    from mlxtune.config_import import export_yaml, to_mlx_lm
    from mlxtune.io import atomic_write_text

    text = export_yaml(to_mlx_lm(resolve(config, set_)))
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
        console.print(f"wrote {out}", markup=False)
