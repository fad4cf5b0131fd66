"""The plan step of `mlxtune train`: every check, the model, the data and the schedule.

`plan()` does all of it before anything is written and returns a `PlannedRun`: the pieces the
loop takes (model, optimizer, batches) and the `TrainPlan` that `--dry-run` prints. Config
problems are found before the model loads, data problems right after; all are reported at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlxtune.config import Config, TrainConfig
from mlxtune.errors import ConfigError
from mlxtune.formats import read_records
from mlxtune.rundir import RunDir
from mlxtune.train.data import Batches, Example, pack, pad_multiple, tokenize


@dataclass
class TrainPlan:
    method: str
    world_size: int
    trainable_params: int
    total_params: int
    train_examples: int
    valid_examples: int
    truncated: int
    batches_per_epoch: int
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    steps: int
    epochs: float
    step_s: float | None = None
    est_time_s: float | None = None
    est_peak_memory_gb: float | None = None
    problems: list[str] = field(default_factory=list)
    lora: str | None = None  # "rank 8, scale 20.0 (mlx-lm's default)" for lora and dora
    # what validate-format flags but this loop handles: truncated rows, a small valid split
    warnings: list[str] = field(default_factory=list)
    # "1 (hidden size 256 < 512: ...)": the count the steps run with, and why; None on a
    # machine without OpenBLAS (macOS, MLXTUNE_OPENBLAS=0)
    blas_threads: str | None = None
    cpu_streams: int = 1  # streams a batch's rows are split over (`runtime.train_cpu_streams`)
    cpu_streams_why: str = ""


MLX_LM_LORA_SCALE = 20.0  # mlx_lm.lora's default lora_parameters.scale


def lora_summary(t: TrainConfig) -> str | None:
    """Rank and scale, and loudly so when the scale is not mlx-lm's: at the same learning rate
    a smaller scale learns proportionally slower (PEFT's alpha = 2 x rank means scale 2)."""
    if t.method == "full":
        return None
    scale = t.effective_lora_scale
    how = f"alpha {t.lora_alpha:g} / rank {t.lora_rank}" if t.lora_alpha is not None else "scale"
    text = f"rank {t.lora_rank}, scale {scale:g} ({how})"
    if scale == MLX_LM_LORA_SCALE:
        return text + ", as mlx-lm"
    return text + (
        f"; mlx-lm's default is {MLX_LM_LORA_SCALE:g}: at the same learning rate this adapter "
        f"moves {scale / MLX_LM_LORA_SCALE:.2g}x as fast"
    )


@dataclass
class PlannedRun:
    """What `plan()` prepared: the plan to print and the pieces the loop takes."""

    plan: TrainPlan
    run: RunDir
    model: Any
    optimizer: Any
    template: str
    train_batches: Batches
    valid_examples: list[Example]
    step_type: Any = None  # the loop's TrainStep class; None for text (vlm.train: VisionTrainStep)
    tokenizer: Any = None


# ---------------------------------------------------------------------------------------------
# Checks before anything is loaded or written


def config_problems(cfg: Config, world_size: int = 1) -> list[str]:
    """Every problem visible from the config alone, one `section.key: message` each."""
    t = cfg.train
    problems = []
    if t.batch_size % world_size:
        problems.append(
            f"train.batch_size: {t.batch_size} is not divisible by the world size {world_size}"
        )
    if t.method == "dora" and t.quantize_bits:
        problems.append("train.quantize_bits: DoRA on a quantized base is not supported")
    if t.warmup_steps and t.lr_schedule == "constant" and t.warmup_steps >= t.iters:
        problems.append(f"train.warmup_steps: {t.warmup_steps} >= train.iters {t.iters}")
    if t.min_lr >= t.learning_rate and t.lr_schedule != "constant":
        problems.append("train.min_lr: must be below train.learning_rate for a decay schedule")
    if t.optimizer in ("adam", "adafactor") and t.weight_decay:
        problems.append(f"train.weight_decay: ignored by {t.optimizer}; use optimizer: adamw")
    for split in ("train", "valid"):
        if not (cfg.data.dir / f"{split}.jsonl").is_file():
            problems.append(
                f"data.dir: {cfg.data.dir / f'{split}.jsonl'} not found (run mlxtune prepare)"
            )
    return problems


def _run_dir_problems(cfg: Config, resume: Path | None, dry_run: bool) -> tuple[RunDir, list[str]]:
    """The run directory to write (or resume) and what is wrong with it."""
    t = cfg.train
    name = t.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run = RunDir(Path(resume) if resume else t.runs_dir / name)
    problems = []
    if not resume and not dry_run and run.run_json.exists():
        problems.append(
            f"train.name: {run.root} already exists (resume it with --resume {run.root}, "
            "or pick another --name)"
        )
    return run, problems


def check_before_loading(
    cfg: Config, world_size: int, *, resume: Path | None, dry_run: bool
) -> tuple[RunDir, list[str]]:
    """The run directory and every problem visible without the model: raised at once (no
    model loaded for nothing), or kept for the dry run's plan."""
    problems = config_problems(cfg, world_size)
    run, run_problems = _run_dir_problems(cfg, resume, dry_run)
    problems += run_problems
    if problems and not dry_run:
        raise ConfigError(problems)
    return run, problems


def _data_problems(
    cfg: Config, train: list[Example], valid: list[Example], world: int, n_layers: int
) -> list[str]:
    t = cfg.train
    problems = []
    if len(train) < t.batch_size:
        problems.append(
            f"train.batch_size: {t.batch_size} exceeds the {len(train)} training examples"
        )
    if not valid:
        problems.append(f"data.dir: {cfg.data.dir / 'valid.jsonl'} has no examples")
    elif len(valid) < world:
        problems.append(f"data.dir: valid.jsonl has fewer examples than the {world} ranks")
    if t.num_layers > n_layers:
        problems.append(f"train.num_layers: {t.num_layers} > the model's {n_layers} layers")
    if train and not any(any(e.mask[1:]) for e in train):
        problems.append("data: no trainable tokens (every token is masked)")
    return problems


def _data_warnings(
    cfg: Config, train_lines: list[int], truncated: list[int], n_valid: int
) -> list[str]:
    """What `validate-format` flags that this loop copes with: rows cut at max_seq_length
    (the loss never sees their end) and a validation split smaller than one batch."""
    t = cfg.train
    out = []
    if truncated:
        first = ", ".join(f"{cfg.data.dir / 'train.jsonl'}:{train_lines[i]}" for i in truncated[:3])
        more = f" and {len(truncated) - 3} more" if len(truncated) > 3 else ""
        out.append(
            f"train.max_seq_length: {len(truncated)} row(s) longer than {t.max_seq_length} "
            f"tokens are truncated ({first}{more})"
        )
    if 0 < n_valid < t.batch_size:
        out.append(
            f"train.batch_size: {t.batch_size} > the {n_valid} rows of valid.jsonl (validation "
            "runs in smaller batches; raw mlx-lm refuses)"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Model set-up and schedule


def setup_model(cfg: Config) -> tuple[Any, Any, str]:
    """(model, tokenizer, template) with the trainable layers in place and everything else
    frozen; quantized first for QLoRA."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from mlxtune.modeling import load_model, qlora_quantization

    t = cfg.train
    model, tokenizer, template = load_model(
        cfg.model, quantization=qlora_quantization(t.quantize_bits)
    )
    mx.random.seed(t.seed)
    model.freeze()
    # num_layers beyond the model is reported with the data problems, all at once.
    if t.method == "full" and t.num_layers == -1:
        model.unfreeze()  # everything, embeddings and head included (mlx-lm: blocks only)
    elif t.method == "full":
        for layer in model.layers[-t.num_layers :]:
            layer.unfreeze()
    else:
        try:
            linear_to_lora_layers(
                model, t.num_layers, lora_parameters(t), use_dora=t.method == "dora"
            )
        except ValueError as e:
            raise ConfigError(f"train.method: {e}") from None
        if t.lora_keys:
            found = {k for k, _ in model.named_modules()}
            missing = [k for k in t.lora_keys if not any(f.endswith(k) for f in found)]
            if missing:
                raise ConfigError(f"train.lora_keys: not in the model: {', '.join(missing)}")
    if t.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    return model, tokenizer, template


def lora_parameters(t: TrainConfig) -> dict[str, Any]:
    """mlx-lm's `lora_parameters`: what `linear_to_lora_layers` and `load_adapters` read."""
    params: dict[str, Any] = {
        "rank": t.lora_rank,
        "scale": t.effective_lora_scale,
        "dropout": t.lora_dropout,
    }
    if t.lora_keys:
        params["keys"] = list(t.lora_keys)
    return params


def _schedule(t: TrainConfig, total_steps: int) -> Any:
    import mlx.optimizers as optim

    decay_steps = max(1, total_steps - t.warmup_steps)
    main: Any
    if t.lr_schedule == "cosine":
        main = optim.cosine_decay(t.learning_rate, decay_steps, t.min_lr)
    elif t.lr_schedule == "linear":
        main = optim.linear_schedule(t.learning_rate, t.min_lr, decay_steps)
    elif not t.warmup_steps:
        return t.learning_rate
    else:
        main = optim.linear_schedule(t.learning_rate, t.learning_rate, 1)  # constant
    if not t.warmup_steps:
        return main
    warm = optim.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
    return optim.join_schedules([warm, main], [t.warmup_steps])


def make_optimizer(t: TrainConfig, total_steps: int) -> Any:
    import mlx.optimizers as optim

    lr = _schedule(t, total_steps)
    if t.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return optim.SGD(learning_rate=lr, weight_decay=t.weight_decay)
    if t.optimizer == "adafactor":
        return optim.Adafactor(learning_rate=lr)
    return optim.Adam(learning_rate=lr)


def total_steps(t: TrainConfig, batches_per_epoch: int) -> int:
    if t.epochs is not None:
        return max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accumulation_steps))
    return t.iters


def _count(tree: Any) -> int:
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(tree)
    leaves: list[Any] = [v for _, v in flat]
    return sum(int(v.size) for v in leaves)


# ---------------------------------------------------------------------------------------------
# The plan step


def plan(cfg: Config, world: Any, *, resume: Path | None, dry_run: bool) -> PlannedRun:
    """Check, load, tokenize and schedule. Raises ConfigError listing every problem, unless
    dry_run, where the problems go into the plan instead."""
    t = cfg.train
    rank, world_size = world.rank(), world.size()

    # 1. Everything checkable without the model, before anything is loaded (or evaluated:
    # the eval order for several CPU streams is read at the process's first eval).
    streams = cpu_streams(cfg, world_size)
    run, problems = check_before_loading(cfg, world_size, resume=resume, dry_run=dry_run)
    train_read = read_records(cfg.data.dir / "train.jsonl") if not _missing(cfg, "train") else []
    valid_read = read_records(cfg.data.dir / "valid.jsonl") if not _missing(cfg, "valid") else []
    train_rows, valid_rows = [r for _, r in train_read], [r for _, r in valid_read]

    # 2. Model and tokens.
    model, tokenizer, template = setup_model(cfg)
    train_ex, truncated = tokenize(
        train_rows,
        tokenizer,
        mask_prompt=t.mask_prompt,
        max_seq_length=t.max_seq_length,
        source=cfg.data.dir / "train.jsonl",
    )
    valid_ex, _ = tokenize(
        valid_rows,
        tokenizer,
        mask_prompt=t.mask_prompt,
        max_seq_length=t.max_seq_length,
        source=cfg.data.dir / "valid.jsonl",
    )
    if t.packing:
        train_ex = pack(train_ex, t.max_seq_length)
    problems += _data_problems(cfg, train_ex, valid_ex, world_size, len(model.layers))
    warnings = _data_warnings(cfg, [n for n, _ in train_read], truncated, len(valid_rows))
    if problems and not dry_run:
        raise ConfigError(problems)

    # 3. Batches and schedule.
    batches = Batches(
        train_ex, t.batch_size, seed=t.seed, rank=rank, world=world_size, pad_to=pad_multiple()
    )
    return plan_batches(
        cfg,
        model,
        batches,
        valid_ex,
        run=run,
        template=template,
        world_size=world_size,
        train_examples=len(train_rows),
        truncated=len(truncated),
        problems=problems,
        warnings=warnings,
        tokenizer=tokenizer,
        streams=streams,
    )


def cpu_streams(cfg: Config, world_size: int) -> tuple[int, str]:
    """`train.cpu_streams` for this process, with MLX's eval order set for it when several."""
    import mlx.core as mx

    from mlxtune.runtime import order_evals_for_streams, train_cpu_streams

    on_cpu = mx.default_device().type == mx.DeviceType.cpu
    t = cfg.train
    streams = train_cpu_streams(t.cpu_streams, t.batch_size, world_size, on_cpu)
    if streams[0] > 1:
        order_evals_for_streams()
    return streams


def plan_batches(
    cfg: Config,
    model: Any,
    batches: Batches,
    valid_examples: list[Example],
    *,
    run: RunDir,
    template: str,
    world_size: int,
    train_examples: int,
    truncated: int,
    problems: list[str],
    warnings: list[str] | None = None,
    tokenizer: Any = None,
    step_type: Any = None,
    streams: tuple[int, str] = (1, "one stream"),
) -> PlannedRun:
    """The schedule over `batches`, the plan that reports it and the optimizer sized to it:
    one for text and vision models, so both plans say the same things (the lora line too)."""
    t = cfg.train
    n_batches = max(1, len(batches))
    steps = total_steps(t, n_batches)
    tokens_epoch, trained_epoch = batches.tokens_per_epoch() if len(batches) else (0, 0)
    the_plan = TrainPlan(
        method=t.method,
        world_size=world_size,
        trainable_params=_count(model.trainable_parameters()),
        total_params=_count(model.parameters()),
        train_examples=train_examples,
        valid_examples=len(valid_examples),
        truncated=truncated,
        batches_per_epoch=len(batches),
        tokens_per_epoch=tokens_epoch,
        trained_tokens_per_epoch=trained_epoch,
        steps=steps,
        epochs=steps * t.grad_accumulation_steps / n_batches,
        problems=problems,
        lora=lora_summary(t),
        warnings=warnings or [],
        blas_threads=set_blas_threads(t.blas_threads, model, streams[0]),
        cpu_streams=streams[0],
        cpu_streams_why=streams[1],
    )
    optimizer = make_optimizer(t, steps)
    optimizer.init(model.trainable_parameters())
    return PlannedRun(
        plan=the_plan,
        run=run,
        model=model,
        optimizer=optimizer,
        template=template,
        train_batches=batches,
        valid_examples=valid_examples,
        step_type=step_type,
        tokenizer=tokenizer,
    )


def set_blas_threads(setting: int, model: Any, streams: int = 1) -> str | None:
    """OpenBLAS's thread count for the steps (process-wide, so before the first one), set per
    `runtime.train_blas_threads`; "N (why)" for the plan, None without OpenBLAS."""
    from mlxtune.runtime import blas_threads, train_blas_threads

    if blas_threads() is None:
        return None
    threads, why = train_blas_threads(setting, model_width(model), streams)
    return f"{blas_threads(threads)} ({why})"


def model_width(model: Any) -> int | None:
    """The hidden size of an mlx-lm model, or of an mlx-vlm model's language model."""
    for owner in (model, getattr(model, "language_model", None)):
        for attr in ("args", "config"):
            width = getattr(getattr(owner, attr, None), "hidden_size", None)
            if isinstance(width, int):
                return width
    return None


def _missing(cfg: Config, split: str) -> bool:
    return not (cfg.data.dir / f"{split}.jsonl").is_file()
