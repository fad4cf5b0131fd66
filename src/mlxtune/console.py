"""The `mlxtune` command's entry point. `mlxtune --help` and `mlxtune VERB --help` print the
text the Typer app renders, kept in `cli_help.json` (written from the live app by
`make docs`; tests/test_cli_help_cache.py fails on any difference), so asking for help does not
pay Typer's import (~90 ms of a ~150 ms start). Anything else, or a terminal narrower than the
80 columns the text was rendered at, goes to the app itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

HELP_CACHE = Path(__file__).with_name("cli_help.json")
PROG = "mlxtune"
RENDER_COLUMNS = 80  # Click wraps help at min(columns, 80) - 2: any terminal this wide or wider


def _columns() -> int:
    """The terminal width as `shutil.get_terminal_size` (what Click asks) computes it."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def cached_help(argv: list[str]) -> str | None:
    """The cached text for `PROG [COMMAND ...] --help`, or None when the app must answer."""
    if len(argv) < 2 or argv[-1] != "--help" or os.path.basename(argv[0]) != PROG:
        return None
    if _columns() < RENDER_COLUMNS:
        return None
    try:
        texts = json.loads(HELP_CACHE.read_text())
    except (OSError, ValueError):
        return None
    text = texts.get(" ".join(argv[1:-1]))
    return text if isinstance(text, str) else None


def main() -> None:
    text = cached_help(sys.argv)
    if text is not None:
        sys.stdout.write(text)
        return
    from mlxtune.cli import main as app_main

    app_main()


def command_paths() -> dict[str, list[str]]:
    """Every command path of the live app: "" for the root, "train", "runs list", ..."""
    import typer

    from mlxtune.cli import app

    paths: dict[str, list[str]] = {"": []}

    def walk(cmd: Any, prefix: list[str]) -> None:  # Typer's own (vendored) click types
        if not hasattr(cmd, "list_commands"):
            return
        ctx = typer.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            paths[" ".join([*prefix, name])] = [*prefix, name]
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def render_help_texts() -> dict[str, str]:
    """What the live app prints for each command's `--help` in an 80-column terminal (what
    Click reads from COLUMNS): the cache's text. Not typer.testing's runner, which forces its
    own width."""
    import contextlib
    import io

    import typer

    from mlxtune.cli import app

    root = typer.main.get_command(app)
    texts = {}
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(RENDER_COLUMNS)
    try:
        for name, args in command_paths().items():
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                root.main([*args, "--help"], prog_name=PROG, standalone_mode=False)
            texts[name] = out.getvalue()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return texts


def write_help_cache(path: Path = HELP_CACHE) -> None:
    from mlxtune.io import atomic_write_text

    atomic_write_text(path, json.dumps(render_help_texts(), indent=1, sort_keys=True) + "\n")
