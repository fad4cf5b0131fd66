"""What every command shares: the consoles, the --config/--set/--json options, `resolve` and
`handles_errors`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from rich.console import Console

    from mlxtune.config import Config


class _LazyConsole:
    """A rich Console made on first use: importing rich.console costs ~50 ms that `--help`
    never needs."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = cast("Console", _LazyConsole())
err_console = cast("Console", _LazyConsole(stderr=True))


def escape(text: str) -> str:
    """rich.markup.escape, imported on first use (rich stays off `--help`)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (mlxtune's, or an mlx-lm lora config: converted).",
        envvar="MLXTUNE_CONFIG",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config value: section.key=value (value parsed as YAML). Repeatable.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def handles_errors(fn: F) -> F:
    """Known errors become one red line and their class's exit code; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlxtuneError as e:
            if os.environ.get("MLXTUNE_DEBUG"):
                raise
            for line in str(e).splitlines() or [type(e).__name__]:
                err_console.print(
                    f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True
                )
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def resolve(config: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Load the config with flags given as dotted keys: flags={'train.iters': 100}."""
    from mlxtune.config import load_config  # pydantic costs ~0.25 s: keep it off --help

    dotted = {k.replace("__", "."): v for k, v in flags.items()}
    cfg = load_config(config, sets, dotted, _flag_names(flags))
    for notice in cfg.notices:
        err_console.print(
            f"[yellow]note:[/yellow] {escape(notice)}", highlight=False, soft_wrap=True
        )
    return cfg


def _flag_names(flags: dict[str, Any]) -> dict[str, str]:
    """{'bench.what': '--what'}: the option each flag value came from, so a bad value is
    blamed on the flag the user typed (found in the running command's parameters)."""
    from typer.main import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return {}
    names = {}
    for key, value in flags.items():
        if value is None:
            continue
        given = [p for p in ctx.command.params if p.name and ctx.params.get(p.name) is value]
        named = [p for p in given if p.name == key.rsplit("__", 1)[-1]] or given
        opts = [o for o in (named[0].opts if len(named) == 1 else []) if o.startswith("--")]
        if opts:
            names[key.replace("__", ".")] = opts[0]
    return names
