"""The `mlxtune` command line: flags -> load_config -> one core call -> render the result.

One module per verb group, registered here by name and imported only when named (cli/lazy.py);
rendering lives in mlxtune.render. Typer and Rich stay in cli/ and render/: core modules never
print and never import typer; they raise MlxtuneError, which `common.handles_errors` turns into
one red line on stderr and the error class's exit code.
Heavy imports (mlx, mlx_lm, datasets, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mlxtune import __version__
from mlxtune.cli.lazy import Verb, VerbGroup

# The verbs in the order `--help` and docs/cli.md list them (Typer lists commands before
# groups). A verb's module is imported only when the verb is named (`mlxtune --help` imports
# none); each summary is its help's first paragraph (tests/test_cli_lazy.py keeps them equal).
VERBS = (
    Verb(
        "doctor",
        "mlxtune.cli.doctor:doctor",
        "Check this machine: versions, device, BLAS speed, memory, hub cache and offline state.",
    ),
    Verb(
        "status",
        "mlxtune.cli.status:status",
        "Where this project stands: device, prepared data, runs and aliases, server, graph.",
    ),
    Verb(
        "tiny-model",
        "mlxtune.cli.data:tiny_model",
        "Build a random-init Llama with a locally trained tokenizer (for tests and demos).",
    ),
    Verb(
        "prepare",
        "mlxtune.cli.data:prepare",
        "Read, clean, deduplicate and split raw data into train/valid/test.jsonl + manifest.json.",
    ),
    Verb(
        "validate-format",
        "mlxtune.cli.data:validate_format",
        "Check every row: JSON, format, schema, roles, lengths, leakage, batch size, prompt.",
    ),
    Verb(
        "train",
        "mlxtune.cli.train:train_cmd",
        "Fine-tune with LoRA, DoRA or full training; resumes exactly, keeps the best adapter.",
    ),
    Verb(
        "evaluate",
        "mlxtune.cli.evaluate:evaluate_cmd",
        "Score an adapter beside its base model, per category; exit 1 if a threshold fails.",
    ),
    Verb(
        "serve",
        "mlxtune.cli.serve:serve",
        "Serve the base model and named adapters with an OpenAI-compatible API.",
    ),
    Verb(
        "verify",
        "mlxtune.cli.verify:verify",
        "Prove a server serves the run: /health names its adapter sha256, and N test questions "
        "asked greedily are answered token for token as the run answers them here.",
    ),
    Verb(
        "bench",
        "mlxtune.cli.bench:bench_cmd",
        "Time train, generate and serve (speed and memory), beside raw mlx-lm with the ratio.",
    ),
    Verb(
        "report",
        "mlxtune.cli.runs:report",
        "Write a self-contained HTML report and markdown: loss curves, evaluation, samples.",
    ),
    Verb(
        "export",
        "mlxtune.cli.runs:export",
        "Fuse a run's adapter into a standalone model that mlx_lm.load (and serve) can load.",
    ),
    Verb("config", "mlxtune.cli.config_cmd:app", "Show, check and create config files."),
    Verb(
        "runs",
        "mlxtune.cli.runs:app",
        "The run registry: list, show, compare, promote and roll back runs.",
    ),
)


class MlxtuneGroup(VerbGroup):
    verbs = VERBS


app = typer.Typer(
    name="mlxtune",
    cls=MlxtuneGroup,
    help="Fine-tune language models with MLX: prepare, validate, train, evaluate, serve, bench.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    # Plain click help: Typer's rich help imports rich.markdown and markdown_it, ~60% of the
    # start-up, for panels our help text does not need.
    rich_markup_mode=None,
)


def version_callback(value: bool) -> None:
    if value:
        from mlxtune.cli.common import console  # the root help imports no verb's helpers

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
    from mlxtune.runtime import run_as_command

    run_as_command(app)
