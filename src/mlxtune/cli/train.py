"""`mlxtune train`: flags -> config -> train (or launch ranks) -> progress and a summary line.
The renderer subscribes to the training events (render/train.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlxtune.cli import mlx_lm_flags as mlx
from mlxtune.cli.common import ConfigOpt, SetOpt, console, err_console, handles_errors, resolve
from mlxtune.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.train import TrainResult


# Long only by its flags: mlxtune's own, then mlx_lm.lora's (hidden) so its command lines work.
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
    # mlx_lm.lora's flag names (hidden): its command lines work unchanged
    model: mlx.ModelFlag = None,
    data: mlx.DataFlag = None,
    adapter_path: mlx.AdapterPathFlag = None,
    fine_tune_type: mlx.FineTuneTypeFlag = None,
    batch_size: mlx.BatchSizeFlag = None,
    num_layers: mlx.NumLayersFlag = None,
    max_seq_length: mlx.MaxSeqLengthFlag = None,
    grad_accumulation_steps: mlx.GradAccumFlag = None,
    steps_per_report: mlx.StepsPerReportFlag = None,
    steps_per_eval: mlx.StepsPerEvalFlag = None,
    save_every: mlx.SaveEveryFlag = None,
    val_batches: mlx.ValBatchesFlag = None,
    seed: mlx.SeedFlag = None,
    optimizer: mlx.OptimizerFlag = None,
    mask_prompt: mlx.MaskPromptFlag = None,
    grad_checkpoint: mlx.GradCheckpointFlag = None,
    trust_remote_code: mlx.TrustRemoteCodeFlag = None,
    train_: mlx.TrainFlag = False,
) -> None:
    """Fine-tune with LoRA, DoRA or full training; resumes exactly, keeps the best adapter."""
    from mlxtune import train as core
    from mlxtune.render.train import TrainRenderer

    if hostfile is not None and not launch:
        raise UsageError("--hostfile: only with --launch N (the ranks it starts)")
    if resume is not None and config is None and (resume / "config.yaml").is_file():
        config = resume / "config.yaml"  # the run's own resolved config
    flags = mlx.adapter_path_flags(adapter_path)
    if name is not None:
        flags["train__name"] = name
    cfg = resolve(
        config,
        set_,
        train__iters=iters,
        train__learning_rate=learning_rate,
        train__method=method or fine_tune_type,
        model__path=model,
        model__trust_remote_code=trust_remote_code,
        data__dir=data,
        train__batch_size=batch_size,
        train__num_layers=num_layers,
        train__max_seq_length=max_seq_length,
        train__grad_accumulation_steps=grad_accumulation_steps,
        train__steps_per_report=steps_per_report,
        train__steps_per_eval=steps_per_eval,
        train__save_every=save_every,
        train__val_batches=val_batches,
        train__seed=seed,
        train__optimizer=optimizer,
        train__mask_prompt=mask_prompt,
        train__grad_checkpoint=grad_checkpoint,
        **flags,
    )
    if launch:
        _launch_ranks(cfg, launch, resume=resume, backend=backend, hostfile=hostfile, json_=json_)
        return
    with TrainRenderer(console, json_=json_) as render:
        result = core.train(cfg, resume=resume, dry_run=dry_run, callback=render)
    _render_outcome(result, dry_run=dry_run, json_=json_)


def _launch_ranks(
    cfg: Config,
    launch: int,
    *,
    resume: Path | None,
    backend: str,
    hostfile: Path | None,
    json_: bool,
) -> None:
    """Start `launch` ranks of this same command under mlx.launch and wait for them all; the
    config is checked once here, not N times in N ranks' output."""
    import tempfile

    from mlxtune import train as core
    from mlxtune.train.launch import strip_launch_args

    if resume is not None:
        core.check_resume(resume)
    problems = core.config_problems(cfg, launch)
    if problems:
        raise ConfigError(problems)

    with tempfile.TemporaryDirectory(prefix="mlxtune-ranks-") as tmp:
        launched = core.launch(
            strip_launch_args(sys.argv[2:]),
            launch,
            backend=backend,
            hostfile=hostfile,
            status_dir=Path(tmp),
        )
    core.check_launch(launched)
    if not json_:
        console.print(f"[green]ok[/green] {launch} ranks completed")


def _render_outcome(result: TrainResult, *, dry_run: bool, json_: bool) -> None:
    """Rank 0 says how it ended: already completed, the plan (exit 2 on problems), or the
    summary (progress lines were the renderer's, as events came)."""
    from mlxtune.render.train import print_plan, print_train_result

    if result.rank:
        return  # rank 0 renders
    if result.plan is None:
        steps = result.final.get("steps", "?")
        err_console.print(
            f"{result.run_dir}: already completed ({steps} steps); nothing to resume "
            "(train a new run with --name)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif dry_run:
        print_plan(console, err_console, result.plan, json_)
        if result.plan.problems:
            raise typer.Exit(2)
    elif not json_:
        print_train_result(console, result)
