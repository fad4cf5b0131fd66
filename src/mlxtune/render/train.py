"""`mlxtune train` on the terminal: the plan table, live progress and the closing line, or JSON
lines with `--json`. `TrainRenderer` hears the same events as the run writer."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mlxtune.render.output import write_json_line
from mlxtune.train.events import (
    CheckpointReached,
    EarlyStopped,
    StepReport,
    TrainDone,
    TrainingCallback,
    TrainStarted,
    ValidationReport,
)

if TYPE_CHECKING:
    from mlxtune.train import TrainPlan, TrainResult

JsonEvent = StepReport | ValidationReport | CheckpointReached | EarlyStopped | TrainDone


def event_json(event: JsonEvent) -> dict[str, Any]:
    """The `--json` line for an event (bench.parse_train_json and scripts read these keys)."""
    if isinstance(event, StepReport):
        return {"event": "train", **asdict(event)}
    if isinstance(event, ValidationReport):
        return {"event": "val", **asdict(event)}
    if isinstance(event, CheckpointReached):
        return {"event": "save", "step": event.step, "path": str(event.path)}
    if isinstance(event, EarlyStopped):
        return {"event": "early_stop", "step": event.step, "best_step": event.best_step}
    return {
        "event": "done",
        "run_dir": str(event.run_dir),
        "status": event.status,
        **asdict(event.final),
    }


class TrainRenderer(TrainingCallback):
    """Progress: a Rich bar on a terminal, plain lines otherwise, JSON lines with --json."""

    def __init__(self, console: Console, *, json_: bool) -> None:
        self.console = console
        self.json = json_
        self.tty = console.is_terminal and not json_
        self.progress: Any = None
        self.task: Any = None
        self.fields = {"loss": "-", "lr": "-", "its": "-", "toks": "-", "mem": "-"}

    def __enter__(self) -> TrainRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_train_started(self, event: TrainStarted) -> None:
        if self.json:
            return
        p = event.plan
        self.console.print(
            f"training {p.method} -> {event.run_dir}: {p.steps} steps, "
            f"{p.trainable_params:,} trainable params"
            + (f", resuming at step {event.resumed_from}" if event.resumed_from else ""),
            highlight=False,
            markup=False,
        )
        if self.tty:
            self._start_progress(p.steps, event.resumed_from)

    def on_step_report(self, event: StepReport) -> None:
        if self.json:
            return write_json_line(event_json(event))
        self.fields.update(
            loss=f"{event.train_loss:.3f}",
            lr=f"{event.lr:.2e}",
            its=f"{event.it_per_s:.2f}",
            toks=f"{event.tokens_per_s:.0f}",
            mem=f"{event.peak_memory_gb:.2f}GB",
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=event.step, **self.fields)
        else:
            self.console.print(
                f"step {event.step}/{event.total_steps} loss {self.fields['loss']} "
                f"lr {self.fields['lr']} it/s {self.fields['its']} "
                f"tok/s {self.fields['toks']} mem {self.fields['mem']}",
                highlight=False,
            )

    def on_validation(self, event: ValidationReport) -> None:
        if self.json:
            return write_json_line(event_json(event))
        msg = f"step {event.step} val loss {event.val_loss:.3f}"
        msg += f" (best {event.best_val_loss:.3f} at {event.best_step})"
        (self.progress.console if self.progress else self.console).print(msg, highlight=False)

    def on_checkpoint(self, event: CheckpointReached) -> None:
        if self.json:
            write_json_line(event_json(event))

    def on_early_stop(self, event: EarlyStopped) -> None:
        if self.json:
            return write_json_line(event_json(event))
        self.console.print(f"early stop at step {event.step} (best {event.best_step})")

    def on_train_done(self, event: TrainDone) -> None:
        if self.json:
            write_json_line(event_json(event))

    def _start_progress(self, steps: int, completed: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]} lr {task.fields[lr]}"),
            TextColumn("{task.fields[its]} it/s {task.fields[toks]} tok/s {task.fields[mem]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=completed, **self.fields)


def print_plan(console: Console, err_console: Console, plan: TrainPlan, json_: bool) -> None:
    """`--dry-run`: the plan as a table and every problem on stderr, or one `plan` JSON line."""
    if json_:
        sys.stdout.write(json.dumps({"event": "plan", **asdict(plan)}) + "\n")
        return
    table = Table(title="training plan", show_header=False)
    table.add_column("what")
    table.add_column("value")
    est_t = "-" if plan.est_time_s is None else f"{plan.est_time_s:.0f}s ({plan.step_s:.3f}s/step)"
    mem = "-" if plan.est_peak_memory_gb is None else f"{plan.est_peak_memory_gb:.2f} GB"
    share = 100 * plan.trainable_params / max(plan.total_params, 1)
    rows = [
        ("method", plan.method),
        *([("lora", plan.lora)] if plan.lora else []),
        (
            "parameters",
            f"{plan.trainable_params:,} trainable of {plan.total_params:,} ({share:.2f}%)",
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
        *([("OpenBLAS threads", plan.blas_threads)] if plan.blas_threads else []),
        *(
            [("CPU streams", f"{plan.cpu_streams} ({plan.cpu_streams_why})")]
            if plan.cpu_streams > 1
            else []
        ),
        ("estimated time", est_t),
        ("estimated peak memory", mem),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for p in plan.problems:
        err_console.print(Text.assemble(("problem:", "red"), f" {p}"), soft_wrap=True)
    for w in plan.warnings:
        err_console.print(Text.assemble(("warning:", "yellow"), f" {w}"), soft_wrap=True)
    if not plan.problems and not plan.warnings:
        console.print("[green]no problems found[/green]")
    elif not plan.problems:
        console.print(f"[yellow]no problems, {len(plan.warnings)} warning(s)[/yellow]")


def print_train_result(console: Console, result: TrainResult) -> None:
    """The closing line of a finished run."""
    f = result.final
    console.print(
        f"[green]{result.status}[/green] {escape(str(result.run_dir))}: {f['steps']} steps, "
        f"train loss {_fmt(f['train_loss'])}, val loss {_fmt(f['val_loss'])}, "
        f"best {_fmt(f['best_val_loss'])} at step {f['best_step']}, {f['wall_s']:.1f}s"
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
