"""`mlxtune train`: LoRA, DoRA and full fine-tuning on mlx-lm's layers, with our own loop.

Shaped like mlx-lm's `tuner/`: `plan` (checks, model, data, schedule) -> `train_loop` (takes its
pieces as arguments, reports typed events to a `TrainingCallback`) -> `RunWriter` (a subscriber
that owns the run directory). `train(cfg)` in `run.py` runs them in order.

  plan.py    config and data checks, model set-up, optimizer and schedule -> PlannedRun/TrainPlan
  loop.py    the compiled step, validation, the loop, dry-run measurement
  events.py  the events (dataclasses) and TrainingCallback
  writer.py  RunWriter, adapters, checkpoints (save, load, find the latest)
  data.py    tokenise, pack, batch (order a pure function of seed and step)
  launch.py  mlx.launch wrapper and the per-rank status files
"""

from mlxtune.errors import DataError
from mlxtune.train.events import (
    CheckpointReached,
    EarlyStopped,
    FinalMetrics,
    LoopState,
    StepReport,
    Subscribers,
    TrainDone,
    TrainingCallback,
    TrainInterrupted,
    TrainStarted,
    ValidationReport,
)
from mlxtune.train.launch import STATUS_DIR_ENV, LaunchResult, check_launch, launch
from mlxtune.train.loop import LoopArgs, train_loop
from mlxtune.train.plan import PlannedRun, TrainPlan, config_problems
from mlxtune.train.run import TrainResult, check_resume, train
from mlxtune.train.writer import RunWriter, adapter_config, latest_checkpoint

__all__ = [
    "STATUS_DIR_ENV",
    "CheckpointReached",
    "DataError",
    "EarlyStopped",
    "FinalMetrics",
    "LaunchResult",
    "LoopArgs",
    "LoopState",
    "PlannedRun",
    "RunWriter",
    "StepReport",
    "Subscribers",
    "TrainDone",
    "TrainInterrupted",
    "TrainPlan",
    "TrainResult",
    "TrainStarted",
    "TrainingCallback",
    "ValidationReport",
    "adapter_config",
    "check_launch",
    "check_resume",
    "config_problems",
    "latest_checkpoint",
    "launch",
    "train",
    "train_loop",
]
