"""Readers for raw data: JSONL/JSON, CSV, Parquet, Hugging Face datasets, SQLite and a Neo4j
graph (`data/graph.py`).

Every reader yields `Row`s that remember where they came from (file and line, or row number
for tabular sources), so every later problem can be reported as `path:line: field: message`.
Bad input raises `BadData` naming the file and line; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import importlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import BadData, ConfigError, UsageError
from mlxtune.io import loads_json

if TYPE_CHECKING:
    from mlxtune.config import SourceConfig

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".db": "sqlite",
}
# Tabular sources hold nested fields (messages, keywords) as JSON text; parse them back.
JSON_FIELDS = ("messages", "conversations", "keywords", "tools")


def _bad(message: str) -> BadData:
    """Bad input data: exit 1, like validate-format's data problems (2 is for usage errors)."""
    return BadData(message)


@dataclass
class Row:
    """One raw record and where it came from. `line` is the 1-based line in a text file
    (JSONL, CSV), or the 1-based record number in a JSON array, Parquet file, Hugging Face
    dataset or SQLite query result."""

    data: dict[str, Any]
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def source_type(src: SourceConfig) -> str:
    """The reader for a source: the configured type, or one picked by extension."""
    if src.type != "auto":
        return src.type
    path = Path(src.path)
    if path.is_dir():
        return "hf"  # a dataset saved with `save_to_disk`
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind:
        return kind
    if not path.exists() and "/" in src.path and not src.path.startswith((".", "/")):
        return "hf"  # a hub id such as "org/name"
    raise ConfigError(
        f"prepare.sources: cannot tell the type of {src.path!r} from its extension; "
        "set type: jsonl|json|csv|parquet|hf|sqlite"
    )


def read_source(src: SourceConfig) -> Iterator[Row]:
    """Rows of one source with `columns` mapping applied and nulls dropped."""
    kind = source_type(src)
    if kind == "neo4j":
        from mlxtune.data.graph import read_graph

        for row in read_graph(src):
            row.data = _map_columns(row, src.columns, tabular=True)
            yield row
        return
    if kind != "hf" and not Path(src.path).exists():
        raise ConfigError(f"prepare.sources: {src.path}: file not found")
    if kind == "sqlite" and not src.query:
        raise ConfigError(f"prepare.sources: {src.path}: a SQLite source needs `query`")
    reader = {
        "jsonl": _read_jsonl,
        "json": _read_json,
        "csv": _read_csv,
        "parquet": _read_parquet,
        "hf": _read_hf,
        "sqlite": _read_sqlite,
    }[kind]
    tabular = kind in ("csv", "parquet", "hf", "sqlite")
    for row in reader(src):
        row.data = _map_columns(row, src.columns, tabular=tabular)
        yield row


def _map_columns(row: Row, columns: dict[str, str], *, tabular: bool) -> dict[str, Any]:
    data = row.data
    if columns:
        missing = [col for col in columns.values() if col not in data]
        if missing:
            raise _bad(
                f"{row.where}: {missing[0]}: column not found (have: {', '.join(map(str, data))})"
            )
        mapped = {field: data[col] for field, col in columns.items()}
        sources = set(columns.values())
        data = {**{k: v for k, v in data.items() if k not in sources}, **mapped}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue  # SQL NULL / empty Parquet cell: the field is absent, not null
        if hasattr(value, "tolist"):
            value = value.tolist()  # numpy arrays from Parquet
        if tabular and key in JSON_FIELDS and isinstance(value, str):
            value = _parse_nested(row, key, value)
        out[str(key)] = value
    return out


def _parse_nested(row: Row, key: str, value: str) -> Any:
    text = value.strip()
    if text.startswith(("[", "{")):
        try:
            return loads_json(text)
        except json.JSONDecodeError as e:
            raise _bad(f"{row.where}: {key}: invalid JSON in cell ({e.msg})") from None
    if key == "keywords":
        return [k.strip() for k in text.split(";") if k.strip()]
    return value


def json_error(e: json.JSONDecodeError) -> str:
    return f"invalid JSON at column {e.colno}: {e.msg.removesuffix(' at')}"


def parse_json_line(text: str, path: str, line: int) -> dict[str, Any]:
    """One JSONL line -> object, or BadData naming the line."""
    try:
        obj = loads_json(text)
    except json.JSONDecodeError as e:
        raise _bad(f"{path}:{line}: json: {json_error(e)}") from None
    if not isinstance(obj, dict):
        raise _bad(f"{path}:{line}: json: expected an object, got {type(obj).__name__}")
    return obj


def iter_jsonl_lines(
    path: str, on_bad_encoding: Callable[[int, str], None] | None = None
) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, decoding UTF-8 line by line. A line that
    is not UTF-8 raises, or goes to `on_bad_encoding(line, message)` and is skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                message = f"not UTF-8 (byte {e.start + 1}: {e.reason})"
                if on_bad_encoding is None:
                    raise _bad(f"{path}:{number}: encoding: {message}") from None
                on_bad_encoding(number, message)
                continue
            if text.strip():
                yield number, text


def _read_jsonl(src: SourceConfig) -> Iterator[Row]:
    for number, text in iter_jsonl_lines(src.path):
        yield Row(parse_json_line(text, src.path, number), src.path, number)


def _read_json(src: SourceConfig) -> Iterator[Row]:
    try:
        text = Path(src.path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _bad(f"{src.path}: encoding: not UTF-8 ({e.reason})") from None
    try:
        data = loads_json(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json
            yield from _read_jsonl(src)
            return
        raise _bad(f"{src.path}:{e.lineno}: json: invalid JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise _bad(f"{src.path}:1: json: expected a list of records")
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise _bad(f"{src.path}:{i}: json: record {i} is {type(obj).__name__}, not object")
        yield Row(obj, src.path, i)


def _read_csv(src: SourceConfig) -> Iterator[Row]:
    with open(src.path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        start = 2  # line 1 is the header
        try:
            for record in reader:
                if None in record:
                    raise _bad(f"{src.path}:{start}: csv: more cells than header columns")
                yield Row({k: v for k, v in record.items() if v != ""}, src.path, start)
                start = reader.line_num + 1
        except csv.Error as e:
            raise _bad(f"{src.path}:{reader.line_num}: csv: {e}") from None
        except UnicodeDecodeError as e:
            raise _bad(f"{src.path}: encoding: not UTF-8 ({e.reason})") from None


def _import_extra(module: str, extra: str, src: SourceConfig, what: str) -> Any:
    """`module` from an optional extra, or a usage error that names the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"prepare.sources: {src.path}: reading {what} needs {module.split('.')[0]}: "
            f"pip install 'mlxtune[{extra}]'"
        ) from None


def _read_parquet(src: SourceConfig) -> Iterator[Row]:
    pq = _import_extra("pyarrow.parquet", "parquet", src, "Parquet")

    try:
        table = pq.read_table(src.path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise _bad(f"{src.path}: parquet: cannot read ({e})") from None
    for i, record in enumerate(table.to_pylist(), 1):
        yield Row(record, src.path, i)


def _read_hf(src: SourceConfig) -> Iterator[Row]:
    datasets = _import_extra("datasets", "datasets", src, "Hugging Face datasets")

    path = Path(src.path)
    try:
        if path.is_dir() and (
            (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
        ):
            ds: Any = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(src.path, src.name, split=src.split)
    except Exception as e:  # hub / file errors come in many types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _bad(f"{src.path}: datasets: cannot load ({first})") from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise ConfigError(
                f"prepare.sources: {src.path}: no split {src.split!r} (have: {', '.join(ds)})"
            )
        ds = ds[src.split]
    for i, record in enumerate(ds, 1):
        yield Row(dict(record), src.path, i)


def _read_sqlite(src: SourceConfig) -> Iterator[Row]:
    assert src.query
    try:
        con = sqlite3.connect(f"file:{src.path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise _bad(f"{src.path}: sqlite: cannot open ({e})") from None
    try:
        cur = con.execute(src.query)
        names = [d[0] for d in cur.description or ()]
        for i, values in enumerate(cur, 1):
            yield Row(dict(zip(names, values, strict=True)), src.path, i)
    except sqlite3.Error as e:
        raise ConfigError(f"prepare.sources: {src.path}: query failed ({e})") from None
    finally:
        con.close()
