"""`mlxtune status`: where this project stands, on one screen, without changing anything.

Reads only: the device and memory (doctor's checks, without its benchmark), the prepared data's
manifest, the run directories under `train.runs_dir` and the aliases in the run registry (opened
read-only, never created), a server's `/health` on the configured port (loopback, short
timeout) and, for each graph source, its node counts by label. A part that cannot be read is
reported as such; status itself fails only on a bad config.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config
    from mlxtune.runs import RunRecord

HEALTH_TIMEOUT_S = 0.5  # a server on loopback answers /health in milliseconds
GRAPH_TIMEOUT_S = 3.0


@dataclass
class DataStatus:
    dir: str
    prepared: bool
    age_s: float | None = None  # since manifest.json was written
    splits: dict[str, int] = field(default_factory=dict)
    read: int | None = None
    written: int | None = None
    funnel: dict[str, Any] = field(default_factory=dict)
    source_kinds: list[str] = field(default_factory=list)  # as prepared (the manifest's)
    problem: str | None = None


@dataclass
class RunSummary:
    name: str
    status: str
    started_at: str | None
    steps: int | None
    val_loss: float | None  # best validation loss when recorded, else the last
    keyword_accuracy: float | None
    aliases: list[str]


@dataclass
class RunsStatus:
    runs_dir: str
    count: int = 0
    latest: RunSummary | None = None
    best: RunSummary | None = None  # lowest validation loss
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> run name
    problem: str | None = None


@dataclass
class ServerStatus:
    url: str
    state: str  # up | unhealthy | down | skipped
    detail: dict[str, Any] = field(default_factory=dict)  # from /health
    problem: str | None = None


@dataclass
class GraphStatus:
    uri: str
    database: str | None
    labels: dict[str, int] | None = None
    problem: str | None = None


@dataclass
class StatusResult:
    device: str | None
    memory_bytes: int | None
    config: str | None
    source_kinds: list[str]  # as configured
    data: DataStatus
    runs: RunsStatus
    server: ServerStatus
    graphs: list[GraphStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(
    cfg: Config,
    *,
    config_path: Path | None = None,
    health_timeout: float = HEALTH_TIMEOUT_S,
    graph_timeout: float = GRAPH_TIMEOUT_S,
) -> StatusResult:
    from mlxtune.data.sources import source_type

    device, memory = _device()
    return StatusResult(
        device=device,
        memory_bytes=memory,
        config=str(config_path) if config_path else None,
        source_kinds=sorted({source_type(s) for s in cfg.prepare.sources}),
        data=data_status(Path(cfg.prepare.out_dir or cfg.data.dir)),
        runs=runs_status(cfg),
        server=server_status(
            cfg.serve.host, cfg.serve.port, health_timeout, cfg.serve.resolved_api_key()
        ),
        graphs=[
            graph_status(s, graph_timeout) for s in cfg.prepare.sources if source_type(s) == "neo4j"
        ],
    )


def _device() -> tuple[str | None, int | None]:
    from mlxtune import doctor, runtime

    runtime.preload_openblas()
    try:
        device = doctor.device_name()
    except Exception:  # a broken MLX install: doctor says why, status only that it is
        device = None
    return device, doctor.memory_bytes()


def data_status(out_dir: Path) -> DataStatus:
    manifest_path = out_dir / "manifest.json"
    result = DataStatus(dir=str(out_dir), prepared=manifest_path.is_file())
    if not result.prepared:
        return result
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        result.age_s = max(0.0, time.time() - manifest_path.stat().st_mtime)
    except (OSError, json.JSONDecodeError) as e:
        result.problem = f"{manifest_path}: unreadable ({e})"
        return result
    counts = manifest.get("counts") or {}
    result.read, result.written = counts.get("read"), counts.get("written")
    result.splits = dict(manifest.get("splits") or {})
    result.funnel = dict(manifest.get("funnel") or {})
    result.source_kinds = sorted({str(s.get("type")) for s in manifest.get("sources") or []})
    return result


def _summary(rec: RunRecord) -> RunSummary:
    final = rec.final or {}
    val = final.get("best_val_loss", final.get("val_loss"))
    acc = rec.eval_overall.get("keyword_accuracy")
    return RunSummary(
        name=rec.name,
        status=rec.status,
        started_at=rec.started_at,
        steps=final.get("steps"),
        val_loss=float(val) if isinstance(val, int | float) else None,
        keyword_accuracy=float(acc) if isinstance(acc, int | float) else None,
        aliases=list(rec.aliases),
    )


def runs_status(cfg: Config) -> RunsStatus:
    """Run directories read in place (no registry sync: status writes nothing), plus the
    registry's aliases when a registry exists."""
    from mlxtune.runs import read_aliases, read_records

    result = RunsStatus(runs_dir=str(cfg.train.runs_dir))
    try:
        records = read_records(cfg.train.runs_dir)
        result.aliases = read_aliases(cfg)
    except MlxtuneError as e:
        result.problem = str(e)
        return result
    for rec in records:
        rec.aliases = [a for a, run in result.aliases.items() if run == rec.name]
    result.count = len(records)
    if records:
        result.latest = _summary(max(records, key=lambda r: (r.started_at or "", r.name)))
        with_val = [s for s in map(_summary, records) if s.val_loss is not None]
        if with_val:
            result.best = min(with_val, key=lambda s: s.val_loss or 0.0)
    return result


def _loopback(host: str) -> str:
    return "[::1]" if host in ("::1", "::") else "127.0.0.1"


def server_status(
    host: str, port: int, timeout: float = HEALTH_TIMEOUT_S, api_key: str | None = None
) -> ServerStatus:
    """GET /health on loopback; with the key (when one is set), so the details come back."""
    if port == 0:
        return ServerStatus(url="", state="skipped", problem="serve.port 0 picks a port at start")
    url = f"http://{_loopback(host)}:{port}/health"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as response:
            return ServerStatus(url, "up", _health_detail(response.read()))
    except urllib.error.HTTPError as e:  # 503: up, but the worker failed
        return ServerStatus(url, "unhealthy", _health_detail(e.read()), f"HTTP {e.code}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return ServerStatus(url, "down", problem=str(reason))


def _health_detail(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    keep = ("status", "error", "default_model", "uptime_s", "queue_depth", "active")
    detail = {k: data[k] for k in keep if k in data}
    if "adapters" in data:  # absent when the server keeps its details behind the key
        adapters = data.get("adapters") or []
        detail["adapters"] = [a.get("name") for a in adapters if isinstance(a, dict)]
    return detail


def graph_status(src: Any, timeout: float = GRAPH_TIMEOUT_S) -> GraphStatus:
    from mlxtune.data import graph

    result = GraphStatus(uri=str(src.uri), database=src.database)
    try:
        result.labels = graph.label_counts(src, timeout=timeout)
    except MlxtuneError as e:
        result.problem = str(e)
    return result
