"""The run registry: every run directory indexed in SQLite, compared, promoted and rolled back.

The registry (`train.registry_dir/registry.sqlite`, default `.mlxtune/` in the working
directory) is an index, not the source of truth: `sync()` rescans `train.runs_dir` on every
`runs` command, so runs written by any tool (mlxtune train, raw `mlx_lm.lora`, a copy from
another machine) appear as long as they follow the run-directory layout (`rundir.py`).
Aliases (`current` by default) and their history live only in the registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlxtune.errors import MlxtuneError
from mlxtune.metrics import METRICS
from mlxtune.rundir import RunDir, live_status, read_metrics, resolve_run

if TYPE_CHECKING:
    from mlxtune.config import Config

DEFAULT_ALIAS = "current"
# Metrics where lower is better: their deltas are shown with the sign meaning "worse".
LOWER_IS_BETTER = frozenset(
    {"loss", "perplexity", "train_loss", "val_loss", "best_val_loss", "wall_s", "peak_memory_gb"}
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    status TEXT,
    method TEXT,
    base_model TEXT,
    config_hash TEXT,
    data_manifest_sha256 TEXT,
    mlx_version TEXT,
    mlx_lm_version TEXT,
    git_commit TEXT,
    started_at TEXT,
    finished_at TEXT,
    final_json TEXT NOT NULL DEFAULT '{}',
    eval_json TEXT,
    signature TEXT NOT NULL,
    indexed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alias TEXT NOT NULL,
    action TEXT NOT NULL,          -- promote | rollback
    run TEXT NOT NULL,             -- the run the alias points at after this event
    path TEXT NOT NULL,
    previous TEXT,                 -- the run it pointed at before
    undone INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class RunRecord:
    """One indexed run: lineage, status and summaries (one row of `runs list`)."""

    name: str
    path: Path
    status: str
    method: str | None
    base_model: str | None
    config_hash: str | None
    data_manifest_sha256: str | None
    mlx_version: str | None
    mlx_lm_version: str | None
    git_commit: str | None
    started_at: str | None
    finished_at: str | None
    final: dict[str, Any]
    evaluation: dict[str, Any] | None
    aliases: list[str] = field(default_factory=list)

    @property
    def eval_overall(self) -> dict[str, Any]:
        """Fine-tuned metrics from the evaluation report ({} when not evaluated)."""
        if not self.evaluation:
            return {}
        return dict((self.evaluation.get("overall") or {}).get("adapter") or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "status": self.status,
            "method": self.method,
            "base_model": self.base_model,
            "config_hash": self.config_hash,
            "data_manifest_sha256": self.data_manifest_sha256,
            "versions": {"mlx": self.mlx_version, "mlx_lm": self.mlx_lm_version},
            "git_commit": self.git_commit,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "final": self.final,
            "evaluation": self.evaluation,
            "aliases": self.aliases,
        }


@dataclass
class SyncResult:
    added: list[str]
    updated: list[str]
    removed: list[str]
    unchanged: int


@dataclass
class RunDetail:
    """Everything `runs show` renders."""

    record: RunRecord
    config: dict[str, Any]
    train_loss: list[tuple[int, float]]
    val_loss: list[tuple[int, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "config": self.config,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
        }


@dataclass
class MetricDelta:
    metric: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        return self.b - self.a

    @property
    def better(self) -> bool | None:
        """Whether B is better than A on this metric (None when unknown or equal)."""
        d = self.delta
        if d is None or d == 0:
            return None
        return d < 0 if self.metric in LOWER_IS_BETTER else d > 0

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "delta": self.delta}


@dataclass
class Comparison:
    """`runs compare A B`: what differs in the config and how the metrics moved (B - A)."""

    a: RunRecord
    b: RunRecord
    config_diff: list[tuple[str, Any, Any]]
    lineage_diff: list[tuple[str, Any, Any]]
    training: list[MetricDelta]
    overall: list[MetricDelta]
    per_category: dict[str, list[MetricDelta]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.name,
            "b": self.b.name,
            "config_diff": [{"key": k, "a": va, "b": vb} for k, va, vb in self.config_diff],
            "lineage_diff": [{"key": k, "a": va, "b": vb} for k, va, vb in self.lineage_diff],
            "training": [m.to_dict() for m in self.training],
            "overall": [m.to_dict() for m in self.overall],
            "per_category": {c: [m.to_dict() for m in ms] for c, ms in self.per_category.items()},
        }


@dataclass
class AliasEvent:
    alias: str
    action: str
    run: str
    path: Path
    previous: str | None
    undone: bool
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "action": self.action,
            "run": self.run,
            "path": str(self.path),
            "previous": self.previous,
            "undone": self.undone,
            "at": self.at,
        }


@dataclass
class AliasChange:
    alias: str
    run: str
    path: Path
    previous: str | None


# ---------------------------------------------------------------------------------------------
# Reading run directories (tolerant: a run written by anything that follows the layout)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise MlxtuneError(f"{path}: cannot read JSON ({e})") from None


def loss_series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(r.get("step", i)), float(r[key]))
        for i, r in enumerate(rows)
        if isinstance(r.get(key), int | float)
    ]


def read_run_config(run: RunDir) -> dict[str, Any]:
    """The run's resolved config.yaml ({} when absent), secrets redacted (a run written
    before redaction may still hold them: they never reach `runs show` or a report)."""
    from mlxtune.config import redact

    if not run.config.is_file():
        return {}
    try:
        data = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise MlxtuneError(f"{run.config}: invalid YAML ({e})") from None
    return redact(data) if isinstance(data, dict) else {}


def read_eval(run: RunDir) -> dict[str, Any] | None:
    report = _read_json(run.eval_dir / "report.json")
    return report if isinstance(report, dict) else None


def _signature(run: RunDir) -> str:
    """Changes whenever a file the index reads changes (size and mtime)."""
    parts = []
    for p in (
        run.run_json,
        run.metrics,
        run.config,
        run.adapter_config,
        run.eval_dir / "report.json",
    ):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _final_from_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    train = loss_series(rows, "train_loss")
    val = loss_series(rows, "val_loss")
    final: dict[str, Any] = {}
    if rows:
        final["steps"] = max(int(r.get("step", 0)) for r in rows)
    if train:
        final["train_loss"] = train[-1][1]
    if val:
        final["val_loss"] = val[-1][1]
        best = min(val, key=lambda sv: sv[1])
        final["best_val_loss"], final["best_step"] = best[1], best[0]
    return final


def _record_from_dir(run: RunDir) -> RunRecord:
    info = run.read_run() if run.run_json.is_file() else {}
    if not isinstance(info, dict):
        info = {}
    adapter_cfg = _read_json(run.adapter_config) or {}
    config = read_run_config(run)
    versions = info.get("versions") or {}
    config_hash = info.get("config_hash")
    if not config_hash and run.config.is_file():
        config_hash = hashlib.sha256(run.config.read_bytes()).hexdigest()[:16]
    final = dict(info.get("final") or {})
    if not final:
        final = _final_from_metrics(read_metrics(run.metrics))
    status = live_status(
        info.get("status") or ("completed" if run.is_adapter() else "unknown"), run
    )
    return RunRecord(
        name=run.name,
        path=run.root.resolve(),
        status=str(status),
        method=info.get("method")
        or (config.get("train") or {}).get("method")
        or adapter_cfg.get("fine_tune_type"),
        base_model=info.get("base_model")
        or (config.get("model") or {}).get("path")
        or adapter_cfg.get("model"),
        config_hash=config_hash,
        data_manifest_sha256=info.get("data_manifest_sha256"),
        mlx_version=versions.get("mlx"),
        mlx_lm_version=versions.get("mlx_lm"),
        git_commit=info.get("git_commit"),
        started_at=info.get("started_at"),
        finished_at=info.get("finished_at"),
        final=final,
        evaluation=read_eval(run),
    )


def _is_run_dir(path: Path) -> bool:
    run = RunDir(path)
    return path.is_dir() and (run.run_json.is_file() or run.adapter_config.is_file())


# ---------------------------------------------------------------------------------------------
# The registry


class Registry:
    """SQLite index of runs and aliases. Open with `Registry.open(cfg)` (a context manager)."""

    def __init__(
        self, db_path: Path, runs_dir: Path, *, read_only: bool = False, create: bool = False
    ) -> None:
        self.db_path = db_path
        self.runs_dir = runs_dir
        if read_only:  # an existing registry, never created or changed (`status`)
            try:
                self.conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
            except sqlite3.Error as e:
                raise MlxtuneError(f"{db_path}: cannot open the run registry ({e})") from None
            self.conn.row_factory = sqlite3.Row
            return
        try:
            if create or db_path.is_file():
                db_path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(db_path, timeout=10)
            else:  # reading leaves no .mlxtune/ behind: index in memory, nothing to keep
                self.conn = sqlite3.connect(":memory:")
        except (OSError, sqlite3.Error) as e:
            raise MlxtuneError(f"train.registry_dir: cannot open {db_path} ({e})") from None
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise MlxtuneError(
                f"{db_path}: not a usable run registry ({e}); move it away and rerun "
                "(it is rebuilt from train.runs_dir, only alias history is lost)"
            ) from None

    @classmethod
    @contextlib.contextmanager
    def open(cls, cfg: Config, *, create: bool = False) -> Iterator[Registry]:
        """`create` for writes (promote); reads of a missing registry index in memory."""
        reg = cls(registry_path(cfg), cfg.train.runs_dir, create=create)
        try:
            yield reg
        finally:
            reg.conn.close()

    # -- index ---------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """Bring the index in line with `runs_dir`. Idempotent; unchanged runs are skipped."""
        root = self.runs_dir.resolve()
        seen: dict[str, RunDir] = {}
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if _is_run_dir(p):
                    seen[p.name] = RunDir(p)
        known = {
            r["name"]: (r["path"], r["signature"])
            for r in self.conn.execute("SELECT name, path, signature FROM runs")
        }
        added: list[str] = []
        updated: list[str] = []
        removed: list[str] = []
        unchanged = 0
        with self.conn:
            for name, run in seen.items():
                sig = _signature(run)
                path = str(run.root.resolve())
                if name in known and known[name] == (path, sig):
                    unchanged += 1
                    continue
                self._upsert(_record_from_dir(run), sig)
                (updated if name in known else added).append(name)
            for name, (path, _) in known.items():
                # Only forget runs that lived in this runs_dir; another config may own the rest.
                if name not in seen and Path(path).parent == root:
                    self.conn.execute("DELETE FROM runs WHERE name = ?", (name,))
                    removed.append(name)
        return SyncResult(added, updated, removed, unchanged)

    def _upsert(self, rec: RunRecord, signature: str) -> None:
        self.conn.execute(
            """INSERT OR REPLACE INTO runs (name, path, status, method, base_model, config_hash,
            data_manifest_sha256, mlx_version, mlx_lm_version, git_commit, started_at,
            finished_at, final_json, eval_json, signature, indexed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                rec.name,
                str(rec.path),
                rec.status,
                rec.method,
                rec.base_model,
                rec.config_hash,
                rec.data_manifest_sha256,
                rec.mlx_version,
                rec.mlx_lm_version,
                rec.git_commit,
                rec.started_at,
                rec.finished_at,
                json.dumps(rec.final),
                json.dumps(rec.evaluation) if rec.evaluation is not None else None,
                signature,
                _now(),
            ),
        )

    def _row_to_record(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            name=row["name"],
            path=Path(row["path"]),
            status=live_status(row["status"], RunDir(Path(row["path"]))),
            method=row["method"],
            base_model=row["base_model"],
            config_hash=row["config_hash"],
            data_manifest_sha256=row["data_manifest_sha256"],
            mlx_version=row["mlx_version"],
            mlx_lm_version=row["mlx_lm_version"],
            git_commit=row["git_commit"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            final=json.loads(row["final_json"] or "{}"),
            evaluation=json.loads(row["eval_json"]) if row["eval_json"] else None,
            aliases=self.aliases_of(row["name"]),
        )

    def records(self) -> list[RunRecord]:
        rows = self.conn.execute(
            "SELECT * FROM runs ORDER BY COALESCE(started_at, ''), name"
        ).fetchall()
        return [self._row_to_record(r) for r in rows]

    def get(self, name: str) -> RunRecord:
        """The indexed run called `name` (exactly). Verbs name runs through `find_run`."""
        row = self.conn.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise MlxtuneError(f"{self.runs_dir}: no run named {name!r} in the registry")
        return self._row_to_record(row)

    def record_for(self, run: RunDir) -> RunRecord:
        """The record of a resolved run directory: its index row, or read from the directory
        itself when it lives outside runs_dir (a path given on the command line)."""
        path = str(run.root.resolve())
        row = self.conn.execute("SELECT * FROM runs WHERE path = ?", (path,)).fetchone()
        if row is not None:
            return self._row_to_record(row)
        rec = _record_from_dir(run)
        rec.aliases = [a for a, ev in self.aliases().items() if str(ev.path) == path]
        return rec

    # -- aliases -------------------------------------------------------------------------

    def _events(self, alias: str) -> list[AliasEvent]:
        rows = self.conn.execute(
            "SELECT * FROM alias_events WHERE alias = ? ORDER BY id", (alias,)
        ).fetchall()
        return [
            AliasEvent(
                alias=r["alias"],
                action=r["action"],
                run=r["run"],
                path=Path(r["path"]),
                previous=r["previous"],
                undone=bool(r["undone"]),
                at=r["at"],
            )
            for r in rows
        ]

    def _live_promotions(self, alias: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM alias_events WHERE alias = ? AND action = 'promote' AND undone = 0 "
            "ORDER BY id",
            (alias,),
        ).fetchall()

    def current(self, alias: str = DEFAULT_ALIAS) -> AliasEvent:
        live = self._live_promotions(alias)
        if not live:
            raise MlxtuneError(
                f"alias {alias!r} points at no run (promote one: mlxtune runs promote NAME)"
            )
        r = live[-1]
        return AliasEvent(
            alias, "promote", r["run"], Path(r["path"]), r["previous"], False, r["at"]
        )

    def aliases(self) -> dict[str, AliasEvent]:
        names = [r[0] for r in self.conn.execute("SELECT DISTINCT alias FROM alias_events")]
        out = {}
        for name in sorted(names):
            with contextlib.suppress(MlxtuneError):
                out[name] = self.current(name)
        return out

    def aliases_of(self, run: str) -> list[str]:
        return [a for a, ev in self.aliases().items() if ev.run == run]

    def history(self, alias: str = DEFAULT_ALIAS) -> list[AliasEvent]:
        return self._events(alias)

    def promote(self, rec: RunRecord, alias: str = DEFAULT_ALIAS) -> AliasChange:
        _check_alias(alias)
        run = RunDir(rec.path)
        if not run.is_adapter():
            raise MlxtuneError(f"{rec.path}: run {rec.name!r} has no adapter to promote")
        previous = None
        with contextlib.suppress(MlxtuneError):
            previous = self.current(alias).run
        with self.conn:
            self.conn.execute(
                "INSERT INTO alias_events (alias, action, run, path, previous, at) "
                "VALUES (?, 'promote', ?, ?, ?, ?)",
                (alias, rec.name, str(rec.path), previous, _now()),
            )
        return AliasChange(alias, rec.name, rec.path, previous)

    def rollback(self, alias: str = DEFAULT_ALIAS) -> AliasChange:
        live = self._live_promotions(alias)
        if not live:
            raise MlxtuneError(f"alias {alias!r} points at no run: nothing to roll back")
        if len(live) < 2:
            raise MlxtuneError(
                f"alias {alias!r} has no earlier run to roll back to "
                f"(it points at {live[-1]['run']})"
            )
        top, prev = live[-1], live[-2]
        with self.conn:
            self.conn.execute("UPDATE alias_events SET undone = 1 WHERE id = ?", (top["id"],))
            self.conn.execute(
                "INSERT INTO alias_events (alias, action, run, path, previous, at) "
                "VALUES (?, 'rollback', ?, ?, ?, ?)",
                (alias, prev["run"], prev["path"], top["run"], _now()),
            )
        return AliasChange(alias, prev["run"], Path(prev["path"]), top["run"])


def _check_alias(alias: str) -> None:
    if not alias or alias.startswith("@") or "/" in alias or alias.strip() != alias:
        raise MlxtuneError(f"--as {alias!r}: an alias is a plain name such as 'current'")


def registry_path(cfg: Config) -> Path:
    return cfg.train.registry_dir / "registry.sqlite"


# ---------------------------------------------------------------------------------------------
# The operations the CLI calls


def read_records(runs_dir: Path) -> list[RunRecord]:
    """Every run directory in runs_dir, read in place: no registry, nothing written."""
    if not runs_dir.is_dir():
        return []
    return [_record_from_dir(RunDir(p)) for p in sorted(runs_dir.iterdir()) if _is_run_dir(p)]


def read_aliases(cfg: Config) -> dict[str, str]:
    """alias -> run name from the registry, opened read-only; {} when there is none."""
    path = registry_path(cfg)
    if not path.is_file():
        return {}
    reg = Registry(path, cfg.train.runs_dir, read_only=True)
    try:
        return {alias: event.run for alias, event in reg.aliases().items()}
    except sqlite3.Error as e:
        raise MlxtuneError(f"{path}: not a usable run registry ({e})") from None
    finally:
        reg.conn.close()


def list_runs(cfg: Config) -> list[RunRecord]:
    with Registry.open(cfg) as reg:
        reg.sync()
        return reg.records()


def show_run(cfg: Config, name: str) -> RunDetail:
    rec = find_run(cfg, name)
    run = RunDir(rec.path)
    rows = read_metrics(run.metrics)
    return RunDetail(
        record=rec,
        config=read_run_config(run),
        train_loss=loss_series(rows, "train_loss"),
        val_loss=loss_series(rows, "val_loss"),
    )


def find_run(cfg: Config, ref: str | Path | None, *, field: str = "run") -> RunRecord:
    """A run's record by name, `@alias` or path (`rundir.resolve_run`), after syncing the
    index. A run without an adapter is found too: show, compare and report read its records."""
    run = resolve_run(ref, cfg, field=field, need_adapter=False)
    with Registry.open(cfg) as reg:
        reg.sync()
        return reg.record_for(run)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


# Keys that differ between any two runs by construction; not worth a line in the diff.
_NOISE_KEYS = frozenset({"train.name"})


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    fa, fb = _flatten(a), _flatten(b)
    missing = object()
    out = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb and key not in _NOISE_KEYS:
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _deltas(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> list[MetricDelta]:
    extra = sorted((set(a) | set(b)) - set(keys))
    return [
        MetricDelta(k, _num(a.get(k)), _num(b.get(k)))
        for k in (*keys, *extra)
        if _num(a.get(k)) is not None or _num(b.get(k)) is not None
    ]


def compare_runs(cfg: Config, name_a: str, name_b: str) -> Comparison:
    a, b = find_run(cfg, name_a), find_run(cfg, name_b)
    lineage_keys = ("base_model", "method", "config_hash", "data_manifest_sha256", "git_commit")
    lineage = [
        (k, getattr(a, k), getattr(b, k)) for k in lineage_keys if getattr(a, k) != getattr(b, k)
    ]
    for k in ("mlx_version", "mlx_lm_version"):
        if getattr(a, k) != getattr(b, k):
            lineage.append((k, getattr(a, k), getattr(b, k)))
    training = _deltas(
        a.final, b.final, ("train_loss", "val_loss", "best_val_loss", "tokens_per_s", "wall_s")
    )
    training = [m for m in training if m.metric not in {"steps", "best_step", "trained_tokens"}]
    overall = _deltas(a.eval_overall, b.eval_overall, METRICS)
    cats_a = (a.evaluation or {}).get("per_category") or {}
    cats_b = (b.evaluation or {}).get("per_category") or {}
    per_category = {
        cat: _deltas(
            (cats_a.get(cat) or {}).get("adapter") or {},
            (cats_b.get(cat) or {}).get("adapter") or {},
            METRICS,
        )
        for cat in sorted(set(cats_a) | set(cats_b))
    }
    return Comparison(
        a=a,
        b=b,
        config_diff=config_diff(read_run_config(RunDir(a.path)), read_run_config(RunDir(b.path))),
        lineage_diff=lineage,
        training=training,
        overall=overall,
        per_category=per_category,
    )


def promote(cfg: Config, name: str, alias: str = DEFAULT_ALIAS) -> AliasChange:
    rec = find_run(cfg, name)
    with Registry.open(cfg, create=True) as reg:
        return reg.promote(rec, alias)


def rollback(cfg: Config, alias: str = DEFAULT_ALIAS) -> AliasChange:
    with Registry.open(cfg) as reg:
        return reg.rollback(alias.removeprefix("@"))


def alias_history(cfg: Config, alias: str = DEFAULT_ALIAS) -> list[AliasEvent]:
    with Registry.open(cfg) as reg:
        return reg.history(alias.removeprefix("@"))


def resolve_alias(alias: str, cfg: Config) -> Path:
    """The run directory an alias points at ("@current" or "current"). For serve:
    `serve.adapters: {prod: "@current"}` resolves here at start-up and on reload."""
    name = alias.removeprefix("@")
    if not registry_path(cfg).is_file():
        raise MlxtuneError(
            f"{registry_path(cfg)}: no run registry, so alias {name!r} is undefined "
            "(promote a run: mlxtune runs promote NAME)"
        )
    with Registry.open(cfg) as reg:
        event = reg.current(name)
    if not RunDir(event.path).is_adapter():
        raise MlxtuneError(
            f"{event.path}: alias {name!r} points at run {event.run!r}, which has no adapter "
            "any more (promote another run or roll back)"
        )
    return event.path


# ---------------------------------------------------------------------------------------------
# Terminal helpers (pure strings; the CLI prints them)

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """Values as a one-line bar chart, resampled to at most `width` characters."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width - 1)] + [values[-1]]
    lo, hi = min(values), max(values)
    span = hi - lo
    if span == 0:
        return _BARS[3] * len(values)
    return "".join(_BARS[round((v - lo) / span * (len(_BARS) - 1))] for v in values)
