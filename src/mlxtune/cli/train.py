"""`mlxtune train`: flags -> config -> train (or launch ranks) -> progress and a summary line.

`_TrainRenderer` and `_print_plan` are the training renderer; they move to render/train.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mlxtune.cli.common import ConfigOpt, SetOpt, console, err_console, handles_errors, resolve


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
