"""`train(cfg)`: the verb, in order — plan, resume, write, loop, finish."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlxtune.config import Config
from mlxtune.errors import UsageError
from mlxtune.rundir import RunDir
from mlxtune.train.events import (
    FinalMetrics,
    LoopState,
    Subscribers,
    TrainDone,
    TrainingCallback,
    TrainStarted,
)
from mlxtune.train.launch import report_status
from mlxtune.train.loop import LoopArgs, measure, train_loop
from mlxtune.train.plan import PlannedRun, TrainPlan, plan
from mlxtune.train.writer import RunWriter, latest_checkpoint, load_checkpoint


@dataclass
class TrainResult:
    run_dir: Path | None
    status: str
    plan: TrainPlan | None  # None when `--resume` found the run already completed
    final: dict[str, Any] = field(default_factory=dict)  # run.json's `final` block
    dry_run: bool = False
    rank: int = 0  # under --launch only rank 0 renders
    # The trained model in memory (library callers compare it with what other verbs load).
    model: Any = field(default=None, repr=False, compare=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def already_completed(self) -> bool:
        return self.plan is None


def train(
    cfg: Config,
    *,
    resume: Path | None = None,
    dry_run: bool = False,
    callback: TrainingCallback | None = None,
) -> TrainResult:
    """Train (or plan, with dry_run) per `cfg`; resume continues a run directory exactly.
    Progress goes to `callback`; under `--launch` each rank also reports its outcome."""
    import mlx.core as mx

    if resume is not None:
        info = check_resume(resume)
        if info is not None:  # nothing to do, and nothing rewritten
            return TrainResult(resume, "completed", None, final=info.get("final") or {})
    world = mx.distributed.init()
    try:
        result = _train(cfg, world, resume, dry_run, callback or TrainingCallback())
    except BaseException as e:
        report_status(world.rank(), "failed", str(e) or type(e).__name__)
        raise
    report_status(world.rank(), result.status)
    return result


def check_resume(resume: Path) -> dict[str, Any] | None:
    """`--resume DIR` is checked before the config and data: DIR must be a run directory with
    a checkpoint to continue from. A completed run returns its run.json (resume is a no-op)."""
    run = RunDir(resume)
    if not run.root.is_dir():
        raise UsageError(f"--resume: {resume}: no such run directory")
    if not run.config.is_file():
        raise UsageError(f"--resume: {resume}: not a run directory (no config.yaml)")
    info = run.read_run()
    if info.get("status") == "completed":
        return info
    if latest_checkpoint(run) is None:
        raise UsageError(
            f"--resume: {resume}: no checkpoint to resume from (it stopped before "
            "train.save_every steps); train it again under a new --name"
        )
    return None


def _train(
    cfg: Config, world: Any, resume: Path | None, dry_run: bool, callback: TrainingCallback
) -> TrainResult:
    from mlxtune.vlm.kind import model_kind

    if model_kind(cfg.model) == "vlm":  # images through mlx-vlm; the same loop and writer
        from mlxtune.vlm.train import plan_vlm

        planned = plan_vlm(cfg, world, resume=resume, dry_run=dry_run)
    else:
        planned = plan(cfg, world, resume=resume, dry_run=dry_run)
    writes = world.rank() == 0
    args = LoopArgs.from_config(
        cfg.train,
        planned.plan.steps,
        len(planned.valid_examples),
        checkpoints=planned.run.checkpoints if writes else None,
        cpu_streams=planned.plan.cpu_streams,
    )
    if dry_run:
        if not planned.plan.problems and planned.step_type is None:  # text only, for now
            _estimate(planned, args, world)
        return TrainResult(
            run_dir=None, status="planned", plan=planned.plan, dry_run=True, rank=world.rank()
        )

    checkpoint = latest_checkpoint(planned.run) if resume else None
    start = LoopState()
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, planned.model, planned.optimizer)
    writer = None
    if writes:
        writer = RunWriter(planned.run, cfg, planned.model, planned.optimizer, planned.template)
    # Only rank 0 writes and renders: N ranks printing the same progress is noise.
    events = Subscribers([writer, callback] if writer else [])
    events.on_train_started(TrainStarted(planned.run.root, start.step, planned.plan))

    outcome = train_loop(
        planned.model,
        planned.optimizer,
        planned.train_batches,
        planned.valid_examples,
        args,
        events,
        world=world,
        start=start,
        step_type=planned.step_type,
    )
    end = outcome.state
    final = FinalMetrics(
        steps=end.step,
        train_loss=outcome.train_loss,
        val_loss=outcome.val_loss,
        best_val_loss=end.best_val,
        best_step=end.best_step,
        stopped_early=outcome.stopped_early,
        trained_tokens=end.trained_tokens,
        tokens_per_s=writer.mean_tokens_per_s() if writer else None,
        wall_s=round(end.wall_s, 3),
        peak_memory_gb=outcome.peak_memory_gb,
    )
    events.on_train_done(TrainDone(planned.run.root, "completed", final))
    return TrainResult(
        run_dir=planned.run.root, status="completed", plan=planned.plan, final=asdict(final),
        model=planned.model, tokenizer=planned.tokenizer, rank=world.rank(),
    )  # fmt: skip


def _estimate(planned: PlannedRun, args: LoopArgs, world: Any) -> None:
    """Fill the plan's time and memory estimates from a few real steps."""
    p = planned.plan
    p.step_s, p.est_peak_memory_gb = measure(
        planned.model, planned.optimizer, planned.train_batches, args, world
    )
    p.est_time_s = p.step_s * p.steps
