"""Small file helpers: every output is written to a temp file, then renamed into place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# A string literal (skipped) or a bare NaN/Infinity/-Infinity token outside any string.
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')


class _NonFinite(Exception):
    """A NaN/Infinity token met by `_DECODER`; `loads_json` words it with its position."""


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


# one decoder for every line: json.loads(text, parse_constant=...) builds a new decoder and
# scanner per call, twice the cost of parsing a short JSONL row
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def loads_json(text: str) -> Any:
    """`json.loads` that refuses NaN, Infinity and -Infinity: Python's parser accepts them, but
    they are not JSON and other tools reject them. Raises `json.JSONDecodeError` at the token."""
    if text.startswith("\ufeff"):
        return json.loads(text)  # its own "Unexpected UTF-8 BOM" error, which decode() lacks
    try:
        return _DECODER.decode(text)
    except _NonFinite as e:
        found = next((m for m in _CONSTANT.finditer(text) if m.group(1)), None)
        raise json.JSONDecodeError(
            f"{e.args[0]} is not valid JSON (use null or a number)",
            text,
            found.start() if found else 0,
        ) from None


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def jsonl_line(row: dict[str, Any]) -> str:
    """A row as the JSONL writers here write it: one line, non-ASCII kept as it is."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(jsonl_line(row))
            n += 1
    return n


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """A temp directory beside `path`; it replaces `path` (and what was there) only if the
    block succeeds, so a failed build never leaves half a directory."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
