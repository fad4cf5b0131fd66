"""The run directory layout, in one place. train writes it; evaluate, serve, runs, report and
export read it. A run directory is also an mlx-lm adapter directory:
`mlx_lm.generate --adapter-path runs/NAME` works on it as is.

runs/NAME/
  adapters.safetensors, adapter_config.json   final adapter (mlx-lm layout)
  best/                                       best-validation adapter (same layout)
  checkpoints/step_0000100/                   adapters + optimizer.safetensors + state.json
  config.yaml                                 the resolved mlxtune config
  chat_template.jinja                         the exact template training rendered with
  run.json                                    status, lineage and final metrics
  metrics.jsonl                               one line per report/eval step
  eval/                                       report.json, report.md, predictions.jsonl
  usage.sqlite                                serve's request log
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxtune.errors import MlxtuneError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def adapter_file(self) -> Path:
        return self.root / "adapters.safetensors"

    @property
    def adapter_config(self) -> Path:
        return self.root / "adapter_config.json"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def chat_template(self) -> Path:
        return self.root / "chat_template.jinja"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def usage_db(self) -> Path:
        return self.root / "usage.sqlite"

    def read_run(self) -> dict[str, Any]:
        if not self.run_json.is_file():
            return {}
        return dict(json.loads(self.run_json.read_text()))

    def is_adapter(self) -> bool:
        return self.adapter_config.is_file() and self.adapter_file.is_file()


def latest_run(runs_dir: Path) -> RunDir:
    """The most recently started run with an adapter in `runs_dir`."""
    candidates = [RunDir(p) for p in runs_dir.glob("*") if p.is_dir() and RunDir(p).is_adapter()]
    if not candidates:
        raise MlxtuneError(f"{runs_dir}: no trained runs (run mlxtune train first)")
    return max(
        candidates, key=lambda r: (r.read_run().get("started_at", ""), r.root.stat().st_mtime)
    )


def resolve_adapter(path: Path | None, runs_dir: Path) -> RunDir:
    """An explicit adapter/run directory, or the latest run."""
    if path is None:
        return latest_run(runs_dir)
    run = RunDir(Path(path))
    if not run.is_adapter():
        raise MlxtuneError(f"{path}: not an adapter directory (no adapter_config.json)")
    return run
