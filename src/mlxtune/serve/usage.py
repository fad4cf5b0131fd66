"""The serve usage log: one SQLite row per request the engine took (served, cancelled or failed),
written by a thread of its own so the event loop never waits on the disk."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("mlxtune.serve")
_PRUNE_EVERY_S = 3600.0


class UsageLog:
    """Every request, one row: time, model, tokens, latency, status, image count, and the
    serve.routes route that picked the model, if any. `log()` only queues the
    row; rows older than `retention_days` (0: kept for ever) are deleted at start and hourly."""

    def __init__(self, path: Path, retention_days: float = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_days = retention_days
        db = sqlite3.connect(str(path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
            "endpoint TEXT, model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, "
            "latency_s REAL, ttft_s REAL, status INTEGER, finish_reason TEXT, route TEXT, "
            "response_format TEXT, images INTEGER)"
        )
        # Logs written before a column existed gain it (NULL in their old rows).
        have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
        for column, kind in (("route", "TEXT"), ("response_format", "TEXT"), ("images", "INTEGER")):
            if column not in have:
                db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
        db.close()
        self._rows: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write, name="mlxtune-usage", daemon=True)
        self._writer.start()

    def log(self, **row: Any) -> None:
        row.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._rows.put(row)

    def flush(self) -> None:
        """Wait until every row logged so far is written."""
        self._rows.join()

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._writer.is_alive():
            self._rows.put(None)
            self._writer.join()

    # -- writer thread ------------------------------------------------------------------------

    def _write(self) -> None:
        db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        pruned_at = float("-inf")  # prune first thing
        try:
            while True:
                if time.monotonic() - pruned_at > _PRUNE_EVERY_S:
                    self._prune(db)
                    pruned_at = time.monotonic()
                batch = [self._rows.get()]
                while not self._rows.empty() and len(batch) < 500:
                    batch.append(self._rows.get_nowait())
                try:
                    self._insert(db, [r for r in batch if r is not None])
                except sqlite3.Error as e:  # a full disk must not stop serving: warn, go on
                    log.warning("usage log: %d row(s) not written: %s", len(batch), e)
                finally:
                    for _ in batch:
                        self._rows.task_done()
                if None in batch:
                    return
        finally:
            db.close()

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
        db.execute("BEGIN")  # one transaction per batch
        try:
            for row in rows:
                cols, marks = ", ".join(row), ", ".join("?" for _ in row)
                db.execute(f"INSERT INTO requests ({cols}) VALUES ({marks})", (*row.values(),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _prune(self, db: sqlite3.Connection) -> None:
        if self.retention_days <= 0:
            return
        cutoff = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - self.retention_days * 86400)
        )
        try:
            db.execute("DELETE FROM requests WHERE time < ?", (cutoff,))
        except sqlite3.Error as e:
            log.warning("usage log: old rows not pruned: %s", e)
