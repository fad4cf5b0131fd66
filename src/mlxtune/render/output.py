"""Machine-readable output: every verb's --json goes through here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def write_json(
    data: Any, *, default: Callable[[Any], Any] | None = None, ensure_ascii: bool = True
) -> None:
    """DATA as indented JSON on stdout, one trailing newline."""
    sys.stdout.write(json.dumps(data, indent=2, default=default, ensure_ascii=ensure_ascii) + "\n")


def write_json_line(data: Any) -> None:
    """One compact JSON line on stdout, flushed (event streams)."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()
