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
import os
import platform
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


def live_status(status: str, run: RunDir) -> str:
    """A `running` run whose process is gone (killed, machine rebooted) is `interrupted`: its
    run.json never got the chance to say so. Only checked for runs started on this host."""
    if status != "running":
        return status
    info = run.read_run()
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or host != platform.node():
        return status
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:
        pass  # alive, another user's
    return status


def latest_run(runs_dir: Path) -> RunDir:
    """The most recently started run with an adapter in `runs_dir`."""
    candidates = [RunDir(p) for p in runs_dir.glob("*") if p.is_dir() and RunDir(p).is_adapter()]
    if not candidates:
        raise MlxtuneError(f"{runs_dir}: no trained runs ({_where_runs_are(runs_dir)})")
    return max(
        candidates, key=lambda r: (r.read_run().get("started_at", ""), r.root.stat().st_mtime)
    )


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


def resolve_run(
    ref: str | Path | None, cfg: Config, *, field: str = "run", need_adapter: bool = True
) -> RunDir:
    """THE way to name a run, for every verb: None -> the latest run; "@alias" -> the run the
    alias points at; a run name under `train.runs_dir`; or a directory. A name that matches
    nothing is an error listing the closest run names. `need_adapter=False` also accepts a run
    without adapter files (a failed run), for verbs that only read its records."""
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
    kind = "an adapter" if need_adapter else "a run"
    path = _find_run_dir(text, runs_dir)
    if path is None:
        raise _no_such_run(text, runs_dir, field, kind)
    run = RunDir(path)
    if need_adapter and not run.is_adapter():
        raise MlxtuneError(
            f"{field}: {path}: not an adapter directory (no adapter_config.json "
            "and adapters.safetensors)"
        )
    if not need_adapter and not (run.run_json.is_file() or run.adapter_config.is_file()):
        raise MlxtuneError(f"{field}: {path}: not a run directory (no run.json)")
    return run


def _is_plain_name(text: str) -> bool:
    path = Path(text)
    return len(path.parts) == 1 and not path.is_absolute()


def _find_run_dir(text: str, runs_dir: Path) -> Path | None:
    """A plain name is looked up in `runs_dir` first; anything else is a path."""
    if _is_plain_name(text) and (runs_dir / text).is_dir():
        return runs_dir / text
    path = Path(text)
    return path if path.is_dir() else None


def _where_runs_are(runs_dir: Path) -> str:
    """How to point a verb at the runs when none were found where it looked."""
    return (
        f"looked in {runs_dir.resolve()}: run mlxtune train, or point at your runs with "
        "-c CONFIG or --set train.runs_dir=DIR"
    )


def _no_such_run(text: str, runs_dir: Path, field: str, kind: str) -> MlxtuneError:
    """One line; for a name, the closest run names (or what runs exist)."""
    if not _is_plain_name(text):
        return MlxtuneError(f"{field}: {text}: not {kind} directory (no such directory)")
    names = sorted(p.name for p in runs_dir.glob("*") if p.is_dir())
    close = difflib.get_close_matches(text, names, n=3)
    if close:
        hint = f" (did you mean {', '.join(close)}?)"
    elif names:
        hint = f" (runs: {', '.join(names[:8])})"
    else:
        hint = f" ({_where_runs_are(runs_dir)})"
    return MlxtuneError(f"{field}: no run named {text!r} in {runs_dir}{hint}")
