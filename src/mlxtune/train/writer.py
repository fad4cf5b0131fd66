"""The run directory a training run writes (layout: `mlxtune.rundir`), and its checkpoints.

`RunWriter` is a `TrainingCallback`: it hears the loop's events and keeps run.json (status,
lineage, final metrics), metrics.jsonl, checkpoints/, best/, the final adapter, config.yaml and
chat_template.jinja up to date. Only rank 0 has one. Every file but the metrics log is written
to a temp name and renamed, so a SIGKILL never leaves half a file or half a checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlxtune import __version__
from mlxtune.config import Config
from mlxtune.formats import template_fingerprint
from mlxtune.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_file
from mlxtune.modeling import QLORA_MARKER, qlora_quantization
from mlxtune.provenance import git_commit, versions
from mlxtune.rundir import RunDir, read_metrics
from mlxtune.train.events import (
    CheckpointReached,
    LoopState,
    StepReport,
    TrainDone,
    TrainingCallback,
    TrainInterrupted,
    TrainStarted,
    ValidationReport,
)
from mlxtune.train.plan import lora_parameters


class RunWriter(TrainingCallback):
    """Writes `run` as the events arrive. `model` and `optimizer` are the ones being trained."""

    def __init__(self, run: RunDir, cfg: Config, model: Any, optimizer: Any, template: str) -> None:
        self.run, self.cfg, self.model, self.optimizer = run, cfg, model, optimizer
        self.template = template
        self.info: dict[str, Any] = {}  # run.json as last written

    def on_train_started(self, event: TrainStarted) -> None:
        run, cfg = self.run, self.cfg
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, cfg.to_yaml(portable=True))  # --resume reloads it
        atomic_write_text(run.chat_template, self.template)
        started_at = _now()
        if event.resumed_from:
            started_at = run.read_run().get("started_at", started_at)
        manifest = cfg.data.dir / "manifest.json"
        self.info = {
            "name": run.name,
            "status": "running",
            "method": cfg.train.method,
            "base_model": cfg.model.path,
            "config_hash": cfg.fingerprint(),
            "data_dir": str(cfg.data.dir),
            "data_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
            "template_sha": template_fingerprint(self.template),
            "versions": versions(),
            "git_commit": git_commit(),
            "started_at": started_at,
            "finished_at": None,
            "world_size": event.plan.world_size,
            "base_quantization": qlora_quantization(cfg.train.quantize_bits),
            "resumed_from_step": event.resumed_from or None,
            "host": platform.node(),
            "pid": os.getpid(),  # with host: `runs` tells a killed run from a running one
            "final": None,
        }
        atomic_write_json(run.run_json, self.info)
        self._trim_metrics(event.resumed_from)

    def on_step_report(self, event: StepReport) -> None:
        self._append_metric(asdict(event))

    def on_validation(self, event: ValidationReport) -> None:
        if event.improved and self.cfg.train.keep_best:
            save_adapter(self.model, self.cfg, self.run.best)
        self._append_metric({"step": event.step, "val_loss": event.val_loss})

    def on_checkpoint(self, event: CheckpointReached) -> None:
        save_checkpoint(event.path, self.model, self.optimizer, self.cfg, event.state)

    def on_interrupted(self, event: TrainInterrupted) -> None:
        self.info.update(status="stopped", finished_at=_now())
        atomic_write_json(self.run.run_json, self.info)

    def on_train_done(self, event: TrainDone) -> None:
        save_adapter(self.model, self.cfg, self.run.root)
        self.info.update(status=event.status, finished_at=_now(), final=asdict(event.final))
        atomic_write_json(self.run.run_json, self.info)

    def mean_tokens_per_s(self) -> float | None:
        """Mean of every report's tokens/s in metrics.jsonl, sessions before a resume included."""
        rates = [r["tokens_per_s"] for r in read_metrics(self.run.metrics) if "tokens_per_s" in r]
        return sum(rates) / len(rates) if rates else None

    def _append_metric(self, row: dict[str, Any]) -> None:
        with open(self.run.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "time": _now()}) + "\n")

    def _trim_metrics(self, step: int) -> None:
        """On resume, drop metric lines written after the checkpoint we continue from."""
        if self.run.metrics.is_file():
            rows = read_metrics(self.run.metrics)
            atomic_write_jsonl(self.run.metrics, (r for r in rows if r.get("step", 0) <= step))


# ---------------------------------------------------------------------------------------------
# Adapters and checkpoints


def adapter_config(cfg: Config) -> dict[str, Any]:
    """What mlx-lm's `load_adapters` (generate, fuse, server) reads, plus the training args."""
    t = cfg.train
    quantization = qlora_quantization(t.quantize_bits)
    return {
        "fine_tune_type": t.method,
        "num_layers": t.num_layers,
        "lora_parameters": lora_parameters(t) if t.method != "full" else None,
        "model": cfg.model.path,
        "data": str(cfg.data.dir),
        "iters": t.iters,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "max_seq_length": t.max_seq_length,
        "mask_prompt": t.mask_prompt,
        "seed": t.seed,
        "mlxtune_version": __version__,
        # mlx-lm ignores this key; mlxtune.modeling.load_model quantizes the base with it.
        # Only when set: mlx-vlm's loader reads a null here as a mapping and fails.
        **({"base_quantization": quantization} if quantization else {}),
    }


def save_adapter(model: Any, cfg: Config, out: Path) -> None:
    """adapters.safetensors + adapter_config.json, each written atomically."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    if cfg.train.quantize_bits:  # raw mlx-lm refuses this adapter instead of misloading it
        weights[QLORA_MARKER] = mx.zeros((1,))
    tmp = out / ".adapters.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights)
    os.replace(tmp, out / "adapters.safetensors")
    atomic_write_json(out / "adapter_config.json", adapter_config(cfg))


def save_checkpoint(path: Path, model: Any, optimizer: Any, cfg: Config, state: LoopState) -> None:
    """`path` (checkpoints/step_NNNNNNN/) with adapter, optimizer and loop state: built in a temp
    dir, renamed into place (a SIGKILL leaves either the old set or the new, never half)."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    tmp = path.parent / f".tmp_{path.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, cfg, tmp)
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    rng_list: Any = mx.random.state
    rng = np.array(rng_list[0]).tolist()
    atomic_write_json(tmp / "state.json", {**asdict(state), "rng_state": rng})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> LoopState:
    """Restore the adapter and optimizer state (moments, step, so the schedule position) saved
    at `path` into `model` and `optimizer`; return the loop state to continue from."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    model.load_weights(str(path / "adapters.safetensors"), strict=False)
    opt_state: Any = mx.load(str(path / "optimizer.safetensors"))
    merged = tree_map_with_path(lambda k, v: opt_state.get(k, v), optimizer.state)
    optimizer.state.update(merged)  # in place: the compiled step holds this dict
    st = json.loads((path / "state.json").read_text())
    mx.eval(model.parameters(), optimizer.state)
    return LoopState(**{f.name: st[f.name] for f in fields(LoopState)})


def latest_checkpoint(run: RunDir) -> Path | None:
    if not run.checkpoints.is_dir():
        return None
    done = sorted(p for p in run.checkpoints.glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
