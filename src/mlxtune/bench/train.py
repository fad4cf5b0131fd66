"""bench train: `mlxtune train --json` beside raw `mlx_lm lora`, both as child processes on the
same data, steps, report interval and hyper-parameters; it/s and tokens/s after warm-up."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.bench.core import Progress, Target
from mlxtune.bench.procs import child_config_yaml, cli_command, run_child, tail
from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config


def train_schedule(warmup: int, steps: int) -> tuple[int, int]:
    """(total iterations, steps per report) so report intervals end exactly where warm-up ends."""
    every = gcd(warmup, steps) if warmup else steps
    return warmup + steps, every


def aggregate_train(reports: list[dict[str, float]], warmup: int, every: int) -> dict[str, float]:
    """Time-weighted it/s and tokens/s over the intervals after warm-up, the trained tokens
    those intervals held (equal on both sides when the timed steps are whole epochs), and peak
    memory overall. Each report is {"step", "it_per_s", "tokens_per_s", "peak_memory_gb"?}
    for `every` steps."""
    timed = [r for r in reports if r["step"] > warmup and r.get("it_per_s")]
    if not timed:
        raise MlxtuneError("bench: training reported no intervals after warm-up")
    seconds = [every / r["it_per_s"] for r in timed]
    total_s = sum(seconds)
    tokens = sum(r["tokens_per_s"] * s for r, s in zip(timed, seconds, strict=True))
    out = {
        "it_per_s": every * len(timed) / total_s,
        "tokens_per_s": tokens / total_s,
        "timed_tokens": round(tokens),
    }
    peaks = [r["peak_memory_gb"] for r in reports if r.get("peak_memory_gb") is not None]
    if peaks:
        out["peak_memory_gb"] = max(peaks)
    return out


# A wrapper around raw `mlx_lm lora` that only listens: it swaps the (unused) reporting
# callback for one that prints mlx-lm's own per-interval figures as JSON, then runs lora's main.
_LORA_SHIM = r"""
import json, sys
import mlx.core as mx
import mlx_lm.lora as lora
from mlx_lm.tuner.trainer import TrainingCallback

class _Report(TrainingCallback):
    def on_train_loss_report(self, info):
        print("MLXTUNE_BENCH " + json.dumps({
            "step": info["iteration"], "it_per_s": info["iterations_per_second"],
            "tokens_per_s": info["tokens_per_second"], "peak_memory_gb": info["peak_memory"],
        }), flush=True)

lora.get_reporting_callbacks = lambda *a, **k: _Report()
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
"""

# Older mlx-lm prints "Iter 10: Train loss 2.1, ..., It/sec 1.2, Tokens/sec 300.1, ...,
# Peak mem 1.2 GB"; kept as a fallback so the parser survives an mlx-lm downgrade.
_OLD_REPORT = re.compile(
    r"Iter (\d+): Train loss [\d.]+.*?It/sec ([\d.]+), Tokens/sec ([\d.]+).*?Peak mem ([\d.]+)"
)


def parse_lora_output(lines: list[str], rows_per_step: int) -> list[dict[str, float]]:
    """mlx-lm's per-interval reports, its token count made ours: mlx-lm 0.32's loss mask
    (`steps <= lengths`) also takes each row's first padding position as a target, so its
    count holds one token per row that no answer contains; `rows_per_step` of them per step are
    taken off (exact while every row is shorter than max_seq_length: one that long has none)."""
    reports = []
    for line in lines:
        if line.startswith("MLXTUNE_BENCH "):
            reports.append(json.loads(line.split(" ", 1)[1]))
        elif m := _OLD_REPORT.search(line):
            reports.append(
                {
                    "step": int(m[1]),
                    "it_per_s": float(m[2]),
                    "tokens_per_s": float(m[3]),
                    "peak_memory_gb": float(m[4]),
                }
            )
    for r in reports:
        r["tokens_per_s"] = max(0.0, r["tokens_per_s"] - rows_per_step * r["it_per_s"])
    return reports


def parse_train_json(lines: list[str]) -> list[dict[str, float]]:
    """`mlxtune train --json` event lines -> the same report shape as the lora shim's."""
    reports = []
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "train" and ev.get("it_per_s"):
            reports.append(
                {
                    "step": ev["step"],
                    "it_per_s": ev["it_per_s"],
                    # mlx-lm counts trained (unmasked) tokens; compare like with like
                    "tokens_per_s": ev.get("trained_tokens_per_s") or ev.get("tokens_per_s") or 0.0,
                    "peak_memory_gb": ev.get("peak_memory_gb"),
                }
            )
    return reports


def check_data(cfg: Config) -> Path:
    data = Path(cfg.data.dir)
    for split in ("train", "valid"):
        if not (data / f"{split}.jsonl").is_file():
            raise MlxtuneError(
                f"data.dir: {data / (split + '.jsonl')} not found (run mlxtune prepare first)"
            )
    return data


def model_config_int(cfg: Config, key: str) -> int | None:
    """`key` from the local model's config.json, or its `text_config` (vision-language
    models); None for a hub id, no file, or no such key."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        model_cfg = json.loads((Path(cfg.model.path) / "config.json").read_text())
        value = model_cfg.get(key) or model_cfg.get("text_config", {}).get(key)
        return int(value) if value else None
    return None


def _num_layers(cfg: Config) -> int:
    """train.num_layers, clamped to the model's depth (mlx-lm rejects more layers than exist)."""
    n = cfg.train.num_layers
    depth = model_config_int(cfg, "num_hidden_layers")
    return -1 if depth is not None and n > depth else n


def train_command(cfg: Config, target: Target, out: Path) -> list[str]:
    """The command for one timed training run, files it needs written under `out`. Both sides
    get the same model, data, steps, report interval and hyper-parameters; features raw mlx-lm
    lacks (packing, grad clipping, schedules, early stopping) are turned off on mlxtune's side."""
    b, t = cfg.bench, cfg.train
    iters, every = train_schedule(b.warmup_steps, b.train_steps)
    if target == "mlx-lm":
        import yaml

        lora_parameters: dict[str, Any] = {
            "rank": t.lora_rank,
            "scale": t.effective_lora_scale,
            "dropout": t.lora_dropout,
        }
        if t.lora_keys:
            lora_parameters["keys"] = t.lora_keys
        lora_cfg = {
            "model": cfg.model.path,
            "train": True,
            "data": str(cfg.data.dir),
            "fine_tune_type": t.method,
            "optimizer": t.optimizer,
            "num_layers": _num_layers(cfg),
            "batch_size": t.batch_size,
            "iters": iters,
            "val_batches": 1,
            "learning_rate": t.learning_rate,
            "steps_per_report": every,
            "steps_per_eval": iters + 1,
            "save_every": iters + 1,
            "adapter_path": str(out / "adapters"),
            "max_seq_length": t.max_seq_length,
            "mask_prompt": t.mask_prompt,
            "grad_checkpoint": t.grad_checkpoint,
            "grad_accumulation_steps": t.grad_accumulation_steps,
            "seed": t.seed,
            "lora_parameters": lora_parameters,
        }
        (out / "lora.yaml").write_text(yaml.safe_dump(lora_cfg))
        return [sys.executable, "-c", _LORA_SHIM, "-c", str(out / "lora.yaml")]
    cfg_file = out / "config.yaml"
    cfg_file.write_text(child_config_yaml(cfg))
    sets = {
        "train.iters": iters,
        "train.epochs": "null",
        "train.num_layers": _num_layers(cfg),
        "train.steps_per_report": every,
        "train.steps_per_eval": iters + 1,
        "train.save_every": iters + 1,
        "train.val_batches": 1,
        "train.runs_dir": str(out / "runs"),
        "train.name": "bench",
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.packing": "false",
        "train.grad_clip": "null",
        "train.early_stopping_patience": "null",
    }
    cmd = [*cli_command(), "train", "-c", str(cfg_file), "--json"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def bench_train_once(
    cfg: Config, target: Target, work: Path, progress: Progress | None = None
) -> dict[str, float | None]:
    """One training run of warmup + train_steps; returns it/s, tokens/s, memory."""
    b = cfg.bench
    check_data(cfg)
    _, every = train_schedule(b.warmup_steps, b.train_steps)
    out = Path(tempfile.mkdtemp(prefix=f"train-{target}-", dir=work))
    try:
        run = run_child(train_command(cfg, target, out), timeout=b.time_limit_s)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if target == "mlx-lm":
        reports = parse_lora_output(run.lines, rows_per_step=cfg.train.batch_size)
    else:
        reports = parse_train_json(run.lines)
    if run.timed_out:
        raise MlxtuneError(f"bench train ({target}): over bench.time_limit_s={b.time_limit_s:g}s")
    if run.returncode != 0 or not reports:
        raise MlxtuneError(
            f"bench train ({target}): exit {run.returncode}, no timing reports: {tail(run.lines)}"
        )
    figures: dict[str, float | None] = dict(aggregate_train(reports, b.warmup_steps, every))
    figures["max_rss_mb"] = run.max_rss_mb
    figures["wall_s"] = run.wall_s  # the whole command: start-up, data, checks, loop, save
    figures["cpu_s"] = run.cpu_s  # the same command's CPU: steadier than wall on a busy machine
    return figures
