"""The `mlxtune` command line: flags -> load_config -> one core call -> render the result.

Typer and Rich live here only. Core modules never print and never import typer; they raise
MlxtuneError, which `handles_errors` turns into one red line on stderr and an exit code.
Heavy imports (mlx, mlx_lm, datasets, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mlxtune import __version__
from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config

app = typer.Typer(
    name="mlxtune",
    help="Fine-tune language models with MLX: prepare, validate, train, evaluate, serve, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Show, check and create config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file.", show_default=False),
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
    """Known errors become one red line and their exit code; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlxtuneError as e:
            if os.environ.get("MLXTUNE_DEBUG"):
                raise
            for line in str(e).splitlines() or [type(e).__name__]:
                err_console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def resolve(config: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Load the config with flags given as dotted keys: flags={'train.iters': 100}."""
    from mlxtune.config import load_config  # pydantic costs ~0.25 s: keep it off --help

    dotted = {k.replace("__", "."): v for k, v in flags.items()}
    return load_config(config, sets, dotted)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"mlxtune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    """Fine-tune language models with MLX."""


# ---------------------------------------------------------------------------------------------
# config


@config_app.command("show")
@handles_errors
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults < file < --set) as YAML."""
    cfg = resolve(config, set_)
    sys.stdout.write(cfg.to_yaml())


@config_app.command("schema")
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


@config_app.command("init")
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


@config_app.command("validate")
@handles_errors
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a config file and report every problem at once."""
    resolve(config, set_)
    console.print(f"[green]ok[/green] {config or '(defaults)'}")


# ---------------------------------------------------------------------------------------------
# doctor and tiny-model


@app.command()
@handles_errors
def doctor(json_: JsonOpt = False) -> None:
    """Check this machine: versions, device, BLAS speed, memory, hub cache and offline state."""
    from mlxtune.doctor import run_doctor

    report = run_doctor()
    if json_:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        table = Table(title="mlxtune doctor", show_header=True)
        table.add_column("check")
        table.add_column("value")
        table.add_column("status")
        for check in report.checks:
            mark = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]"}.get(
                check.status, "[red]fail[/red]"
            )
            table.add_row(check.name, check.value, mark)
        console.print(table)
        for check in report.checks:
            if check.fix:
                console.print(f"[yellow]fix[/yellow] {check.name}: {check.fix}")
    if not report.ok:
        raise typer.Exit(1)


@app.command("tiny-model")
@handles_errors
def tiny_model(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the model to.")],
    preset: Annotated[str, typer.Option(help="tiny (hidden 256, 4 layers) or small.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    corpus: Annotated[
        list[Path] | None,
        typer.Option(help="Files to train the tokenizer on (default: every file in data/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
) -> None:
    """Build a random-init Llama with a locally trained tokenizer (for tests and demos)."""
    from mlxtune.tiny_model import build_tiny_model

    with console.status("building tiny model"):
        result = build_tiny_model(out, preset=preset, seed=seed, corpus=corpus, force=force)
    console.print(
        f"wrote {result.path}: {result.preset}, {result.parameters / 1e6:.2f}M parameters, "
        f"vocab {result.vocab_size}, tokenizer trained on {len(result.corpus_files)} file(s)"
    )


# ---------------------------------------------------------------------------------------------
# prepare / validate-format  (issue 4)


# ---------------------------------------------------------------------------------------------
# train  (issue 5)


# ---------------------------------------------------------------------------------------------
# evaluate  (issue 6)


# ---------------------------------------------------------------------------------------------
# serve  (issue 7)


@app.command()
@handles_errors
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1).", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (default 8000; 0 = any).", show_default=False)
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", help="Serve an adapter: NAME=PATH. Repeatable.", show_default=False
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (or env MLXTUNE_API_KEY).", show_default=False
        ),
    ] = None,
) -> None:
    """Serve the base model and named adapters with an OpenAI-compatible API."""
    from mlxtune.serve import serve as run_server

    flags: dict[str, Any] = {"serve__host": host, "serve__port": port, "serve__api_key": api_key}
    for item in adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or "." in name or not path.strip():
            raise MlxtuneError(f"--adapter {item!r}: expected NAME=PATH")
        flags[f"serve__adapters__{name.strip()}"] = path.strip()
    cfg = resolve(config, set_, **flags)
    if cfg.serve.host not in ("127.0.0.1", "localhost", "::1") and not (
        cfg.serve.api_key or os.environ.get("MLXTUNE_API_KEY")
    ):
        err_console.print(
            f"[yellow]warning:[/yellow] binding {cfg.serve.host} with no API key: anyone who "
            "can reach this port can use the models (set serve.api_key or MLXTUNE_API_KEY)"
        )

    def ready(url: str, names: list[str]) -> None:
        console.print(f"[green]serving[/green] {', '.join(names)} at {url}  (docs: {url}/docs)")

    err_console.print("loading models ...")
    result = run_server(cfg, on_ready=ready)
    console.print(f"stopped after {result.requests} request(s)")


# ---------------------------------------------------------------------------------------------
# bench  (issue 8)


# ---------------------------------------------------------------------------------------------
# runs / report / export  (issue 9)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
