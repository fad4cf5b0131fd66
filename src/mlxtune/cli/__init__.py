"""The `mlxtune` command line: flags -> load_config -> one core call -> render the result.

One module per verb group registers here; rendering lives in mlxtune.render. Typer and Rich stay
in cli/ and render/: core modules never print and never import typer; they raise MlxtuneError,
which `common.handles_errors` turns into one red line on stderr and the error class's exit code.
Heavy imports (mlx, mlx_lm, datasets, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mlxtune import __version__
from mlxtune.cli import (
    bench,
    config_cmd,
    data,
    doctor,
    evaluate,
    runs,
    serve,
    status,
    train,
    verify,
)
from mlxtune.cli.common import console

app = typer.Typer(
    name="mlxtune",
    help="Fine-tune language models with MLX: prepare, validate, train, evaluate, serve, bench.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    # Plain click help: Typer's rich help imports rich.markdown and markdown_it, ~60% of the
    # start-up, for panels our help text does not need.
    rich_markup_mode=None,
)
# Registration order is the order `--help` and docs/cli.md list the commands in.
app.add_typer(config_cmd.app, name="config")
app.command()(doctor.doctor)
app.command()(status.status)
app.command("tiny-model")(data.tiny_model)
app.command()(data.prepare)
app.command("validate-format")(data.validate_format)
app.command("train")(train.train_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command()(serve.serve)
app.command()(verify.verify)
app.command("bench")(bench.bench_cmd)
app.add_typer(runs.app, name="runs")
app.command()(runs.report)
app.command()(runs.export)


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


def main() -> None:
    app()
