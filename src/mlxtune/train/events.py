"""What a training run reports, as typed events, and `TrainingCallback`, the way to hear them.

Like mlx-lm's `TrainingCallback`, one hook per event; subscribers override the hooks they need.
`RunWriter` (the run directory) and the CLI renderer (terminal, `--json`) are both subscribers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlxtune.train.plan import TrainPlan


@dataclass
class LoopState:
    """Where the loop stands: what a checkpoint's state.json holds, and what a resume restores."""

    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    since_best: int = 0  # evaluations without improvement, for early stopping
    trained_tokens: int = 0
    wall_s: float = 0.0  # training time so far, over every session of the run


@dataclass(frozen=True)
class TrainStarted:
    run_dir: Path
    resumed_from: int  # the checkpoint step a resume continues from; 0 for a fresh run
    plan: TrainPlan


@dataclass(frozen=True)
class StepReport:
    """Training figures over the steps since the last report (every `steps_per_report`)."""

    step: int
    total_steps: int
    train_loss: float
    lr: float
    it_per_s: float
    tokens_per_s: float  # every non-pad token
    trained_tokens_per_s: float  # unmasked tokens only (what mlx-lm calls tok/s)
    trained_tokens: int  # since the run began
    peak_memory_gb: float


@dataclass(frozen=True)
class ValidationReport:
    step: int
    val_loss: float
    best_val_loss: float
    best_step: int

    @property
    def improved(self) -> bool:
        """This evaluation is the new best."""
        return self.best_step == self.step


@dataclass(frozen=True)
class CheckpointReached:
    """A checkpoint step on the writing rank: RunWriter saves it at `path`, and subscribers
    after it see it saved."""

    step: int
    path: Path
    state: LoopState


@dataclass(frozen=True)
class EarlyStopped:
    step: int
    best_step: int | None


@dataclass(frozen=True)
class TrainInterrupted:
    """Ctrl-C: the loop stops after this event and re-raises KeyboardInterrupt."""

    step: int


@dataclass(frozen=True)
class FinalMetrics:
    """The run's outcome: run.json's `final` block and the `done` JSON line."""

    steps: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    trained_tokens: int
    tokens_per_s: float | None  # mean over the run's reports (from metrics.jsonl, rank 0)
    wall_s: float
    peak_memory_gb: float


@dataclass(frozen=True)
class TrainDone:
    run_dir: Path
    status: str
    final: FinalMetrics


class TrainingCallback:
    """Override the hooks you need; each is called on every rank unless said otherwise."""

    def on_train_started(self, event: TrainStarted) -> None:
        pass

    def on_step_report(self, event: StepReport) -> None:
        pass

    def on_validation(self, event: ValidationReport) -> None:
        pass

    def on_checkpoint(self, event: CheckpointReached) -> None:
        """Only on the rank that writes (rank 0)."""

    def on_early_stop(self, event: EarlyStopped) -> None:
        pass

    def on_interrupted(self, event: TrainInterrupted) -> None:
        pass

    def on_train_done(self, event: TrainDone) -> None:
        pass


class Subscribers(TrainingCallback):
    """Several callbacks heard as one, in order (RunWriter first, so files exist before the
    terminal reports them)."""

    def __init__(self, callbacks: Sequence[TrainingCallback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_started(self, event: TrainStarted) -> None:
        for c in self.callbacks:
            c.on_train_started(event)

    def on_step_report(self, event: StepReport) -> None:
        for c in self.callbacks:
            c.on_step_report(event)

    def on_validation(self, event: ValidationReport) -> None:
        for c in self.callbacks:
            c.on_validation(event)

    def on_checkpoint(self, event: CheckpointReached) -> None:
        for c in self.callbacks:
            c.on_checkpoint(event)

    def on_early_stop(self, event: EarlyStopped) -> None:
        for c in self.callbacks:
            c.on_early_stop(event)

    def on_interrupted(self, event: TrainInterrupted) -> None:
        for c in self.callbacks:
            c.on_interrupted(event)

    def on_train_done(self, event: TrainDone) -> None:
        for c in self.callbacks:
            c.on_train_done(event)
