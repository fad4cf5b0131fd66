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


@app.command("train")
@handles_errors
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue runs/NAME from its last checkpoint, exactly.", show_default=False
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan and every config problem; train nothing."),
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Emit JSON lines (train, val, save, done events).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Run name (train.name).")] = None,
    iters: Annotated[int | None, typer.Option(help="Optimizer steps (train.iters).")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate (train.learning_rate).")
    ] = None,
    method: Annotated[str | None, typer.Option(help="lora, dora or full (train.method).")] = None,
    launch: Annotated[
        int | None,
        typer.Option(help="Run data-parallel on N local ranks under mlx.launch (ring backend)."),
    ] = None,
    hostfile: Annotated[
        Path | None, typer.Option(help="mlx.launch hostfile (with --launch) for a cluster.")
    ] = None,
    backend: Annotated[str, typer.Option(help="mlx.launch backend with --launch.")] = "ring",
) -> None:
    """Fine-tune with LoRA, DoRA or full training; resumes exactly, keeps the best adapter."""
    from mlxtune import train as core

    if resume is not None and config is None and (resume / "config.yaml").is_file():
        config = resume / "config.yaml"  # the run's own resolved config
    cfg = resolve(
        config,
        set_,
        train__name=name,
        train__iters=iters,
        train__learning_rate=learning_rate,
        train__method=method,
    )
    if launch:
        import tempfile

        args = [a for a in sys.argv[2:]]
        args = _strip_launch_args(args)
        with tempfile.TemporaryDirectory(prefix="mlxtune-ranks-") as tmp:
            launched = core.launch(
                args, launch, backend=backend, hostfile=hostfile, status_dir=Path(tmp)
            )
        core.check_launch(launched)
        if not json_:
            console.print(f"[green]ok[/green] {launch} ranks completed")
        return
    render = _TrainRenderer(json_=json_)
    with render:
        result = core.train(cfg, resume=resume, dry_run=dry_run, callback=render)
    if dry_run:
        _print_plan(result.plan, json_)
        if result.plan.problems:
            raise typer.Exit(2)
    elif not json_:
        f = result.final
        console.print(
            f"[green]{result.status}[/green] {result.run_dir}: {f['steps']} steps, "
            f"train loss {_fmt(f['train_loss'])}, val loss {_fmt(f['val_loss'])}, "
            f"best {_fmt(f['best_val_loss'])} at step {f['best_step']}, {f['wall_s']:.1f}s"
        )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _strip_launch_args(args: list[str]) -> list[str]:
    """The user's train arguments minus the launcher's own (--launch/--hostfile/--backend)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in ("--launch", "--hostfile", "--backend"):
            skip = "=" not in a
            continue
        out.append(a)
    return out


def _print_plan(plan: Any, json_: bool) -> None:
    from dataclasses import asdict

    if json_:
        sys.stdout.write(json.dumps({"event": "plan", **asdict(plan)}) + "\n")
        return
    table = Table(title="training plan", show_header=False)
    table.add_column("what")
    table.add_column("value")
    est_t = "-" if plan.est_time_s is None else f"{plan.est_time_s:.0f}s ({plan.step_s:.3f}s/step)"
    mem = "-" if plan.est_peak_memory_gb is None else f"{plan.est_peak_memory_gb:.2f} GB"
    rows = [
        ("method", plan.method),
        (
            "parameters",
            f"{plan.trainable_params:,} trainable of {plan.total_params:,} "
            f"({100 * plan.trainable_params / max(plan.total_params, 1):.2f}%)",
        ),
        (
            "examples",
            f"{plan.train_examples} train, {plan.valid_examples} valid, {plan.truncated} truncated",
        ),
        (
            "tokens per epoch",
            f"{plan.tokens_per_epoch:,} ({plan.trained_tokens_per_epoch:,} trained)",
        ),
        ("steps", f"{plan.steps} ({plan.epochs:.1f} epochs of {plan.batches_per_epoch} batches)"),
        ("world size", str(plan.world_size)),
        ("estimated time", est_t),
        ("estimated peak memory", mem),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for p in plan.problems:
        err_console.print(f"[red]problem:[/red] {p}", highlight=False, soft_wrap=True)
    if not plan.problems:
        console.print("[green]no problems found[/green]")


class _TrainRenderer:
    """Progress: a Rich bar on a terminal, plain lines otherwise, JSON lines with --json."""

    def __init__(self, json_: bool) -> None:
        self.json = json_
        self.tty = console.is_terminal and not json_
        self.progress: Any = None
        self.task: Any = None
        self.fields = {"loss": "-", "lr": "-", "its": "-", "toks": "-", "mem": "-"}

    def __enter__(self) -> _TrainRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if self.json:
            if kind == "start":
                return
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            return
        if kind == "start":
            self._start(event)
        elif kind == "train":
            self.fields.update(
                loss=f"{event['train_loss']:.3f}",
                lr=f"{event['lr']:.2e}",
                its=f"{event['it_per_s']:.2f}",
                toks=f"{event['tokens_per_s']:.0f}",
                mem=f"{event['peak_memory_gb']:.2f}GB",
            )
            if self.progress is not None:
                self.progress.update(self.task, completed=event["step"], **self.fields)
            else:
                console.print(
                    f"step {event['step']}/{event['total_steps']} loss {self.fields['loss']} "
                    f"lr {self.fields['lr']} it/s {self.fields['its']} "
                    f"tok/s {self.fields['toks']} mem {self.fields['mem']}",
                    highlight=False,
                )
        elif kind == "val":
            msg = f"step {event['step']} val loss {event['val_loss']:.3f}"
            msg += f" (best {event['best_val_loss']:.3f} at {event['best_step']})"
            (self.progress.console if self.progress else console).print(msg, highlight=False)
        elif kind == "early_stop":
            console.print(f"early stop at step {event['step']} (best {event['best_step']})")

    def _start(self, event: dict[str, Any]) -> None:
        console.print(
            f"training {event['method']} -> {event['run_dir']}: {event['steps']} steps, "
            f"{event['trainable_params']:,} trainable params"
            + (f", resuming at step {event['resumed_from']}" if event["resumed_from"] else ""),
            highlight=False,
        )
        if not self.tty:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]} lr {task.fields[lr]}"),
            TextColumn("{task.fields[its]} it/s {task.fields[toks]} tok/s {task.fields[mem]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=event["steps"], completed=event["resumed_from"], **self.fields
        )


# ---------------------------------------------------------------------------------------------
# evaluate  (issue 6)


# ---------------------------------------------------------------------------------------------
# serve  (issue 7)


# ---------------------------------------------------------------------------------------------
# bench  (issue 8)


# ---------------------------------------------------------------------------------------------
# runs / report / export  (issue 9)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
