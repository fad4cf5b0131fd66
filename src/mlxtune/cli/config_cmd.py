"""`mlxtune config show|schema|init|validate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlxtune.cli.common import ConfigOpt, SetOpt, console, handles_errors, resolve
from mlxtune.errors import MlxtuneError

app = typer.Typer(help="Show, check and create config files.", no_args_is_help=True)


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
        raise MlxtuneError(f"{out}: already exists (use --force to overwrite)")
    atomic_write_text(out, starter_yaml(model))
    console.print(f"wrote {out}")


@app.command("validate")
@handles_errors
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a config file and report every problem at once."""
    resolve(config, set_)
    console.print(f"[green]ok[/green] {config or '(defaults)'}")
