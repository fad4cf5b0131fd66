"""The serve usage log: one SQLite row per request (served, refused or cancelled)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


class UsageLog:
    """Every request, one row: time, model, tokens, latency, status."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
            "endpoint TEXT, model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, "
            "latency_s REAL, ttft_s REAL, status INTEGER, finish_reason TEXT)"
        )

    def log(self, **row: Any) -> None:
        row.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT INTO requests ({cols}) VALUES ({marks})", tuple(row.values()))

    def close(self) -> None:
        with self._lock:
            self._db.close()
