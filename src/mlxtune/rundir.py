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

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; blank lines and a torn last line (a run still writing) are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def resolve_run(ref: str | Path | None, cfg: Config, *, field: str = "run") -> RunDir:
    """THE way to name a run, for every verb: None -> the latest run; "@alias" -> the run the
    alias points at; an existing directory; or a run name under `train.runs_dir`. A name that
    matches nothing is an error listing the closest run names."""
    runs_dir = cfg.train.runs_dir
    if ref is None or str(ref) == "":
        return latest_run(runs_dir)
    text = str(ref)
    if text.startswith("@"):
        from mlxtune.runs import resolve_alias

        try:
            return RunDir(resolve_alias(text, cfg))
        except MlxtuneError as e:
            raise MlxtuneError(f"{field}: {e}") from None
    path = Path(text)
    if not path.is_dir() and not path.is_absolute() and (runs_dir / path).is_dir():
        path = runs_dir / path
    if not path.is_dir():
        names = sorted(p.name for p in runs_dir.glob("*") if p.is_dir())
        close = difflib.get_close_matches(text, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        if not close and names:
            hint = f" (runs in {runs_dir}: {', '.join(names[:8])})"
        raise MlxtuneError(f"{field}: no run {text!r} in {runs_dir} and no such directory{hint}")
    run = RunDir(path)
    if not run.is_adapter():
        raise MlxtuneError(f"{field}: {path} is not a run or adapter directory (no adapter files)")
    return run
