"""`mlxtune train`: LoRA, DoRA and full fine-tuning on mlx-lm's layers, with our own loop.

mlx-lm's `train()` cannot resume optimizer state, step and data order, keep the best adapter,
stop early, or mask every assistant turn, so the loop lives here. Pieces come from mlx-lm:
`linear_to_lora_layers` (LoRA/DoRA layers), `grad_checkpoint`, `mlx.optimizers` schedules.

Compared with mlx-lm's loop this one (a) does not clear the allocator cache every step
(mlx-lm's default `clear_cache_threshold=0` frees and re-allocates every buffer each step),
(b) pads to a multiple of 8 instead of 32 (+1), and (c) builds the next batch while the
current step runs (`mx.async_eval`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlxtune import __version__
from mlxtune.config import Config, TrainConfig
from mlxtune.errors import ConfigError, DataError, MlxtuneError
from mlxtune.formats import template_fingerprint
from mlxtune.io import atomic_write_json, atomic_write_text, sha256_file
from mlxtune.provenance import git_commit, versions
from mlxtune.rundir import RunDir
from mlxtune.train_data import Batches, Example, collate, pack, read_split, tokenize

Callback = Callable[[dict[str, Any]], None]
STATUS_DIR_ENV = "MLXTUNE_STATUS_DIR"  # set by `--launch`: each rank reports here


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


@dataclass
class TrainResult:
    run_dir: Path | None
    status: str
    plan: TrainPlan
    final: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False


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


# ---------------------------------------------------------------------------------------------
# Model set-up


def _setup_model(cfg: Config) -> tuple[Any, Any, str]:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from mlxtune.modeling import load_model

    t = cfg.train
    model, tokenizer, template = load_model(cfg.model)
    if t.quantize_bits:
        nn.quantize(model, bits=t.quantize_bits, group_size=64)
    mx.random.seed(t.seed)
    model.freeze()
    # num_layers beyond the model is reported with the data problems, all at once.
    if t.method == "full" and t.num_layers == -1:
        model.unfreeze()  # everything, embeddings and head included (mlx-lm: blocks only)
    elif t.method == "full":
        for layer in model.layers[-t.num_layers :]:
            layer.unfreeze()
    else:
        params = _lora_parameters(t)
        try:
            linear_to_lora_layers(model, t.num_layers, params, use_dora=t.method == "dora")
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


def _lora_parameters(t: TrainConfig) -> dict[str, Any]:
    params: dict[str, Any] = {
        "rank": t.lora_rank,
        "scale": t.effective_lora_scale,
        "dropout": t.lora_dropout,
    }
    if t.lora_keys:
        params["keys"] = list(t.lora_keys)
    return params


def adapter_config(cfg: Config) -> dict[str, Any]:
    """What mlx-lm's `load_adapters` (generate, fuse, server) reads, plus the training args."""
    t = cfg.train
    return {
        "fine_tune_type": t.method,
        "num_layers": t.num_layers,
        "lora_parameters": _lora_parameters(t) if t.method != "full" else None,
        "model": cfg.model.path,
        "data": str(cfg.data.dir),
        "iters": t.iters,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "max_seq_length": t.max_seq_length,
        "mask_prompt": t.mask_prompt,
        "seed": t.seed,
        "mlxtune_version": __version__,
    }


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


def _optimizer(t: TrainConfig, total_steps: int) -> Any:
    import mlx.optimizers as optim

    lr = _schedule(t, total_steps)
    if t.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return optim.SGD(learning_rate=lr, weight_decay=t.weight_decay)
    if t.optimizer == "adafactor":
        return optim.Adafactor(learning_rate=lr)
    return optim.Adam(learning_rate=lr)


def _count(tree: Any) -> int:
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(tree)
    leaves: list[Any] = [v for _, v in flat]
    return sum(int(v.size) for v in leaves)


# ---------------------------------------------------------------------------------------------
# The loop


class _Trainer:
    def __init__(self, cfg: Config, model: Any, optimizer: Any, world: Any) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.nn.utils import average_gradients
        from mlx.utils import tree_map

        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.world = world
        t = cfg.train
        accum = t.grad_accumulation_steps
        clip = t.grad_clip
        world_size = world.size()

        def loss_fn(model: Any, inputs: Any, targets: Any, mask: Any) -> tuple[Any, Any]:
            logits = model(inputs)
            ce = nn.losses.cross_entropy(logits, targets) * mask
            ntoks = mask.sum()
            return ce.astype(mx.float32).sum() / ntoks, ntoks

        self.loss_fn = loss_fn
        value_and_grad = nn.value_and_grad(model, loss_fn)
        self.state = [model.state, optimizer.state, mx.random.state]

        def step(inputs: Any, targets: Any, mask: Any, prev: Any, update: bool) -> Any:
            (loss, toks), grad = value_and_grad(model, inputs, targets, mask)
            if prev is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev)
            if update:
                if world_size > 1:
                    grad = average_gradients(grad)
                if accum > 1:
                    grad = tree_map(lambda g: g / accum, grad)
                if clip:
                    import mlx.optimizers as optim

                    grad, _ = optim.clip_grad_norm(grad, clip)
                optimizer.update(model, grad)
                grad = None
            return loss, toks, grad

        self.step = mx.compile(step, inputs=self.state, outputs=self.state)

    def evaluate(self, valid: list[Example], batch_size: int, max_batches: int) -> float:
        import mlx.core as mx

        self.model.eval()
        rank, size = self.world.rank(), self.world.size()
        order = sorted(range(len(valid)), key=lambda i: len(valid[i].tokens))
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if max_batches != -1:
            groups = groups[:max_batches]
        total, ntok = mx.array(0.0), mx.array(0.0)
        for g in groups:
            mine = g[rank::size]
            if not mine:
                continue
            inputs, targets, mask, _ = collate([valid[i] for i in mine])
            loss, toks = self.loss_fn(
                self.model, mx.array(inputs), mx.array(targets), mx.array(mask)
            )
            total = total + loss * toks
            ntok = ntok + toks
            mx.eval(total, ntok)
        if size > 1:
            total = mx.distributed.all_sum(total, stream=mx.cpu)
            ntok = mx.distributed.all_sum(ntok, stream=mx.cpu)
        self.model.train()
        return _item(total / mx.maximum(ntok, 1))


def _save_adapter(model: Any, cfg: Config, out: Path) -> None:
    """adapters.safetensors + adapter_config.json, each written atomically."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    tmp = out / ".adapters.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights)
    os.replace(tmp, out / "adapters.safetensors")
    atomic_write_json(out / "adapter_config.json", adapter_config(cfg))


def _save_checkpoint(
    run: RunDir, model: Any, optimizer: Any, cfg: Config, state: dict[str, Any]
) -> Path:
    """checkpoints/step_NNNNNNN/ with adapter, optimizer and loop state: built in a temp dir,
    renamed into place (a SIGKILL leaves either the old set or the new, never half)."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    final = run.checkpoints / f"step_{state['step']:07d}"
    tmp = run.checkpoints / f".tmp_step_{state['step']:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    _save_adapter(model, cfg, tmp)
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    rng_list: Any = mx.random.state
    rng = np.array(rng_list[0]).tolist()
    atomic_write_json(tmp / "state.json", {**state, "rng_state": rng})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run: RunDir) -> Path | None:
    if not run.checkpoints.is_dir():
        return None
    done = sorted(p for p in run.checkpoints.glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _total_steps(t: TrainConfig, batches_per_epoch: int) -> int:
    if t.epochs is not None:
        return max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accumulation_steps))
    return t.iters


def _report_status(rank: int, status: str, error: str | None = None) -> None:
    where = os.environ.get(STATUS_DIR_ENV)
    if where:
        atomic_write_json(
            Path(where) / f"rank{rank}.json", {"rank": rank, "status": status, "error": error}
        )


def train(
    cfg: Config,
    *,
    resume: Path | None = None,
    dry_run: bool = False,
    callback: Callback | None = None,
) -> TrainResult:
    """Train (or plan, with dry_run) per `cfg`; resume continues a run directory exactly."""
    import mlx.core as mx

    world = mx.distributed.init()
    try:
        result = _train(cfg, world, resume=resume, dry_run=dry_run, callback=callback)
    except BaseException as e:
        _report_status(world.rank(), "failed", str(e) or type(e).__name__)
        raise
    _report_status(world.rank(), result.status)
    return result


def _train(
    cfg: Config,
    world: Any,
    *,
    resume: Path | None,
    dry_run: bool,
    callback: Callback | None,
) -> TrainResult:
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    emit: Callback = callback or (lambda _e: None)
    t = cfg.train
    rank, world_size = world.rank(), world.size()
    writer = rank == 0 and not dry_run

    # 1. Everything checkable without the model, before anything is written.
    problems = config_problems(cfg, world_size)
    name = t.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run = RunDir(Path(resume) if resume else t.runs_dir / name)
    ckpt: Path | None = None
    if resume:
        ckpt = latest_checkpoint(run)
        if not run.config.is_file():
            problems.append(f"{run.root}: not a run directory (no config.yaml)")
    elif not dry_run and run.run_json.exists():
        problems.append(
            f"train.name: {run.root} already exists (resume it with --resume {run.root}, "
            "or pick another --name)"
        )
    if problems and not dry_run:
        raise ConfigError(problems)

    train_rows = read_split(cfg.data.dir / "train.jsonl") if not _missing(cfg, "train") else []
    valid_rows = read_split(cfg.data.dir / "valid.jsonl") if not _missing(cfg, "valid") else []

    # 2. Model, tokens, plan.
    model, tokenizer, template = _setup_model(cfg)
    train_ex, truncated = tokenize(
        train_rows, tokenizer, mask_prompt=t.mask_prompt, max_seq_length=t.max_seq_length
    )
    valid_ex, _ = tokenize(
        valid_rows, tokenizer, mask_prompt=t.mask_prompt, max_seq_length=t.max_seq_length
    )
    if t.packing:
        train_ex = pack(train_ex, t.max_seq_length)
    problems += _data_problems(cfg, train_ex, valid_ex, world_size, len(model.layers))
    if problems and not dry_run:
        raise ConfigError(problems)

    batches = Batches(train_ex, t.batch_size, seed=t.seed, rank=rank, world=world_size)
    n_batches = max(1, len(batches))
    total_steps = _total_steps(t, n_batches)
    tokens_epoch, trained_epoch = batches.tokens_per_epoch() if len(batches) else (0, 0)
    plan = TrainPlan(
        method=t.method,
        world_size=world_size,
        trainable_params=_count(model.trainable_parameters()),
        total_params=_count(model.parameters()),
        train_examples=len(train_rows),
        valid_examples=len(valid_rows),
        truncated=truncated,
        batches_per_epoch=len(batches),
        tokens_per_epoch=tokens_epoch,
        trained_tokens_per_epoch=trained_epoch,
        steps=total_steps,
        epochs=total_steps * t.grad_accumulation_steps / n_batches,
        problems=problems,
    )

    optimizer = _optimizer(t, total_steps)
    optimizer.init(model.trainable_parameters())
    trainer = _Trainer(cfg, model, optimizer, world)
    model.train()

    if dry_run:
        if not problems:
            _measure(trainer, batches, plan, t)
        return TrainResult(run_dir=None, status="planned", plan=plan, dry_run=True)

    # 3. Resume state.
    step = 0
    best_val: float | None = None
    best_step: int | None = None
    since_best = 0
    trained_tokens = 0
    wall_before = 0.0
    started_at = _now()
    if ckpt is not None:
        model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
        opt_state: Any = mx.load(str(ckpt / "optimizer.safetensors"))
        merged = tree_map_with_path(lambda k, v: opt_state.get(k, v), optimizer.state)
        optimizer.state.update(merged)  # in place: the compiled step holds this dict
        st = json.loads((ckpt / "state.json").read_text())
        mx.random.seed(_step_seed(t.seed, st["step"]))
        step, best_val, best_step = st["step"], st["best_val"], st["best_step"]
        since_best, trained_tokens = st["since_best"], st["trained_tokens"]
        wall_before = st["wall_s"]
        started_at = run.read_run().get("started_at", started_at)
        mx.eval(model.parameters(), optimizer.state)

    # 4. Run directory (rank 0 only).
    run_info: dict[str, Any] = {}
    if writer:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, cfg.to_yaml())
        atomic_write_text(run.chat_template, template)
        manifest = cfg.data.dir / "manifest.json"
        run_info = {
            "name": run.name,
            "status": "running",
            "method": t.method,
            "base_model": cfg.model.path,
            "config_hash": cfg.fingerprint(),
            "data_dir": str(cfg.data.dir),
            "data_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
            "template_sha": template_fingerprint(template),
            "versions": versions(),
            "git_commit": git_commit(),
            "started_at": started_at,
            "finished_at": None,
            "world_size": world_size,
            "resumed_from_step": step if ckpt else None,
            "host": platform.node(),
            "final": None,
        }
        atomic_write_json(run.run_json, run_info)
        _trim_metrics(run.metrics, step)

    emit({"event": "start", "run_dir": str(run.root), "resumed_from": step, **asdict(plan)})

    # 5. Loop.
    accum = t.grad_accumulation_steps
    val_bs = max(1, min(t.batch_size, len(valid_ex)))
    losses: list[Any] = []
    window_tokens = 0
    window_trained: list[Any] = []
    window_time = 0.0
    window_steps = 0
    last_train_loss: float | None = None
    last_val: float | None = None
    stopped_early = False
    status = "completed"
    wall_start = time.perf_counter()
    grad = None
    mx.reset_peak_memory()

    def prepare(micro: int) -> tuple[Any, Any, Any, int]:
        inputs, targets, mask, real = batches.arrays(batches.indices(micro))
        return mx.array(inputs), mx.array(targets), mx.array(mask), real

    micro = step * accum
    nxt = prepare(micro) if step < total_steps else None
    try:
        while step < total_steps:
            tic = time.perf_counter()
            for k in range(accum):
                assert nxt is not None
                inputs, targets, mask, real = nxt
                loss, toks, grad = trainer.step(inputs, targets, mask, grad, k == accum - 1)
                mx.async_eval(trainer.state, loss, toks, grad)
                micro += 1
                last_micro = micro >= total_steps * accum
                nxt = None if last_micro else prepare(micro)
                losses.append(loss)
                window_trained.append(toks)
                window_tokens += real
            mx.eval(trainer.state, losses, window_trained)
            step += 1
            window_steps += 1
            window_time += time.perf_counter() - tic

            if step % t.steps_per_report == 0 or step == total_steps:
                loss_sum = mx.stack(losses).sum()
                trained = mx.stack(window_trained).sum()
                counts = mx.array([float(window_tokens), float(len(losses))])
                if world_size > 1:
                    loss_sum = mx.distributed.all_sum(loss_sum, stream=mx.cpu)
                    trained = mx.distributed.all_sum(trained, stream=mx.cpu)
                    counts = mx.distributed.all_sum(counts, stream=mx.cpu)
                last_train_loss = _item(loss_sum) / _item(counts[1])
                all_tokens = int(_item(counts[0]))
                trained_tokens += int(_item(trained))
                event = {
                    "event": "train",
                    "step": step,
                    "total_steps": total_steps,
                    "train_loss": last_train_loss,
                    "lr": _item(optimizer.learning_rate),
                    "it_per_s": window_steps / window_time,
                    "tokens_per_s": all_tokens / window_time,
                    "trained_tokens_per_s": _item(trained) / window_time,
                    "trained_tokens": trained_tokens,
                    "peak_memory_gb": mx.get_peak_memory() / 1e9,
                }
                emit(event)
                if writer:
                    _append_metric(run.metrics, event)
                losses, window_trained = [], []
                window_tokens, window_time, window_steps = 0, 0.0, 0

            if step % t.steps_per_eval == 0 or step == total_steps:
                last_val = trainer.evaluate(valid_ex, val_bs, t.val_batches)
                improved = best_val is None or last_val < best_val - t.early_stopping_min_delta
                if improved:
                    best_val, best_step, since_best = last_val, step, 0
                    if writer and t.keep_best:
                        _save_adapter(model, cfg, run.best)
                else:
                    since_best += 1
                event = {"event": "val", "step": step, "val_loss": last_val}
                emit({**event, "best_val_loss": best_val, "best_step": best_step})
                if writer:
                    _append_metric(run.metrics, event)
                patience = t.early_stopping_patience
                if patience and since_best >= patience and step < total_steps:
                    stopped_early = True

            if step % t.save_every == 0 or stopped_early:
                if writer:
                    state = {
                        "step": step,
                        "best_val": best_val,
                        "best_step": best_step,
                        "since_best": since_best,
                        "trained_tokens": trained_tokens,
                        "wall_s": wall_before + time.perf_counter() - wall_start,
                    }
                    path = _save_checkpoint(run, model, optimizer, cfg, state)
                    emit({"event": "save", "step": step, "path": str(path)})
                # The RNG (dropout) restarts from (seed, step) at every checkpoint, so a resumed
                # run draws exactly what the uninterrupted one drew.
                mx.random.seed(_step_seed(t.seed, step))
                if world_size > 1:  # keep ranks in step while rank 0 writes
                    mx.eval(mx.distributed.all_sum(mx.array(1.0), stream=mx.cpu))
            if stopped_early:
                emit({"event": "early_stop", "step": step, "best_step": best_step})
                break
    except KeyboardInterrupt:
        status = "stopped"
        if writer:
            run_info.update(status=status, finished_at=_now())
            atomic_write_json(run.run_json, run_info)
        raise

    wall = wall_before + time.perf_counter() - wall_start
    final = {
        "steps": step,
        "train_loss": last_train_loss,
        "val_loss": last_val,
        "best_val_loss": best_val,
        "best_step": best_step,
        "stopped_early": stopped_early,
        "trained_tokens": trained_tokens,
        "tokens_per_s": _mean_tokens_per_s(run.metrics) if writer else None,
        "wall_s": round(wall, 3),
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }
    if writer:
        _save_adapter(model, cfg, run.root)
        run_info.update(status=status, finished_at=_now(), final=final)
        atomic_write_json(run.run_json, run_info)
    emit({"event": "done", "run_dir": str(run.root), "status": status, **final})
    return TrainResult(run_dir=run.root, status=status, plan=plan, final=final)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**32)


def _item(x: Any) -> float:
    return float(x.item())


def _missing(cfg: Config, split: str) -> bool:
    return not (cfg.data.dir / f"{split}.jsonl").is_file()


def _measure(trainer: _Trainer, batches: Batches, plan: TrainPlan, t: TrainConfig) -> None:
    """Time a few real steps (the model is thrown away afterwards) for the plan's estimates."""
    import mlx.core as mx

    mx.reset_peak_memory()
    # The longest batch bounds memory; time the typical ones.
    longest = max(
        range(len(batches)), key=lambda i: len(batches.examples[batches.groups[i][-1]].tokens)
    )
    times = []
    for n, micro in enumerate([longest, 0, 1, 2]):
        idx = batches.groups[micro % len(batches)][batches.rank :: batches.world]
        inputs, targets, mask, _ = batches.arrays(idx)
        tic = time.perf_counter()
        out = trainer.step(mx.array(inputs), mx.array(targets), mx.array(mask), None, True)
        mx.eval(trainer.state, out[0])
        if n >= 2:  # first two calls compile
            times.append(time.perf_counter() - tic)
    plan.step_s = sum(times) / len(times) * t.grad_accumulation_steps
    plan.est_time_s = plan.step_s * plan.steps
    plan.est_peak_memory_gb = mx.get_peak_memory() / 1e9


def _append_metric(path: Path, event: dict[str, Any]) -> None:
    row = {k: v for k, v in event.items() if k != "event"}
    row["time"] = _now()
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we continue from."""
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _mean_tokens_per_s(path: Path) -> float | None:
    if not path.is_file():
        return None
    rates = [
        r["tokens_per_s"]
        for r in map(json.loads, path.read_text().splitlines())
        if "tokens_per_s" in r
    ]
    return sum(rates) / len(rates) if rates else None


# ---------------------------------------------------------------------------------------------
# mlx.launch wrapper


@dataclass
class LaunchResult:
    returncode: int
    ranks: dict[int, dict[str, Any]]
    failed: list[str]


def launch(
    train_args: list[str],
    n: int,
    *,
    backend: str = "ring",
    hostfile: Path | None = None,
    status_dir: Path,
) -> LaunchResult:
    """Run `mlxtune train ARGS` on N local ranks (or a hostfile) under mlx.launch and check
    every rank's status file: mlx.launch itself exits 0 even when a rank failed."""
    from mlxtune.runtime import subprocess_env

    status_dir.mkdir(parents=True, exist_ok=True)
    for old in status_dir.glob("rank*.json"):
        old.unlink()
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or "mlx.launch"
    cmd = [launcher, "--backend", backend]
    cmd += ["--hostfile", str(hostfile)] if hostfile else ["-n", str(n)]
    src = str(Path(__file__).resolve().parent.parent)
    env = subprocess_env()
    env[STATUS_DIR_ENV] = str(status_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for key in (STATUS_DIR_ENV, "PYTHONPATH", "LD_PRELOAD"):
        if env.get(key):
            cmd += ["--env", f"{key}={env[key]}"]
    cmd += ["--", sys.executable, "-m", "mlxtune", "train", *train_args]
    proc = subprocess.run(cmd, env=env, check=False)
    ranks: dict[int, dict[str, Any]] = {}
    for p in status_dir.glob("rank*.json"):
        info = json.loads(p.read_text())
        ranks[int(info["rank"])] = info
    failed = []
    for r in range(n):
        info = ranks.get(r)
        if info is None:
            failed.append(f"rank {r}: exited without reporting (crashed or killed)")
        elif info["status"] not in ("completed", "planned"):
            failed.append(f"rank {r}: {info['status']}: {info.get('error')}")
    return LaunchResult(returncode=proc.returncode, ranks=ranks, failed=failed)


def check_launch(result: LaunchResult) -> None:
    if result.failed or result.returncode != 0:
        lines = result.failed or [f"mlx.launch exited with {result.returncode}"]
        raise MlxtuneError("distributed run failed: " + "; ".join(lines))


__all__ = [
    "DataError",
    "LaunchResult",
    "TrainPlan",
    "TrainResult",
    "adapter_config",
    "check_launch",
    "config_problems",
    "latest_checkpoint",
    "launch",
    "train",
]
