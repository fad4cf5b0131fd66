"""Data checks that miss nothing (issue 19): non-JSON constants, empty splits, duplicate rows
within a split, and raw sources validated through prepare's own readers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlxtune.cli import app
from mlxtune.errors import DataError
from mlxtune.formats import read_records
from test_data import GOOD, SOURCES, write_config

runner = CliRunner()


def _chat_lines(n: int) -> list[str]:
    return (GOOD / "chat.jsonl").read_text().splitlines()[:n]


def test_nan_and_infinity_rejected_at_file_line(tmp_path: Path, tiny_model: Path) -> None:
    rows = _chat_lines(4)
    rows[1] = rows[1][:-1] + ', "score": NaN}'
    rows[2] = rows[2][:-1] + ', "score": Infinity}'
    rows[3] = rows[3][:-1] + ', "note": "NaN here is text", "score": -Infinity}'
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = write_config(tmp_path, tiny_model, [{"path": str(data)}])

    val = runner.invoke(app, ["validate-format", "-c", str(cfg), str(data), "--json"])
    assert val.exit_code == 1
    found = {p["line"]: p["message"] for p in json.loads(val.stdout)["problems"]}
    for line, token in ((2, "NaN"), (3, "Infinity"), (4, "-Infinity")):
        column = rows[line - 1].index(token, rows[line - 1].index('"score"')) + 1
        assert found[line] == f"invalid JSON at column {column}: {token} is not valid JSON " + (
            "(use null or a number)"
        )

    prep = runner.invoke(app, ["prepare", "-c", str(cfg)])
    assert prep.exit_code == 1
    assert f"{data}:2: json: invalid JSON at column" in prep.stderr
    assert not (tmp_path / "prepared").exists()

    with pytest.raises(DataError, match=rf"{data}:2: invalid JSON \(NaN is not valid JSON"):
        read_records(data)  # what train and evaluate read splits with


def test_empty_split_file(tmp_path: Path, tiny_model: Path, domain_data: Path) -> None:
    prepared = tmp_path / "prepared"
    shutil.copytree(domain_data, prepared)
    (prepared / "test.jsonl").write_text("\n")
    cfg = write_config(
        tmp_path,
        tiny_model,
        [],
    )
    val = runner.invoke(
        app, ["validate-format", "-c", str(cfg), "--set", "train.max_seq_length=512"]
    )
    assert val.exit_code == 1, val.output
    assert f"{prepared}/test.jsonl: rows: empty file (no records)" in val.stdout


def test_split_empty_after_filtering(tmp_path: Path, tiny_model: Path) -> None:
    row = _chat_lines(1)[0]
    data = tmp_path / "same.jsonl"
    data.write_text("\n".join([row] * 3) + "\n")  # dedup leaves one row: train only
    cfg = write_config(tmp_path, tiny_model, [{"path": str(data)}])
    prep = runner.invoke(app, ["prepare", "-c", str(cfg)])
    assert prep.exit_code == 1, prep.output
    assert (
        f"error: {tmp_path}/prepared/valid.jsonl: empty after filtering (1 rows in 1 group(s) "
        "left for valid, test)" in prep.stderr
    )
    assert not (tmp_path / "prepared").exists()


def test_split_with_ratio_zero_is_not_written_empty(tmp_path: Path, tiny_model: Path) -> None:
    cfg = write_config(tmp_path, tiny_model, [{"path": str(GOOD / "chat.jsonl")}], test_ratio=0)
    assert runner.invoke(app, ["prepare", "-c", str(cfg)]).exit_code == 0
    assert not (tmp_path / "prepared" / "test.jsonl").exists()
    assert runner.invoke(app, ["validate-format", "-c", str(cfg)]).exit_code == 0


def test_same_row_twice_in_one_split(tmp_path: Path, tiny_model: Path) -> None:
    rows = _chat_lines(4)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([*rows, rows[1]]) + "\n")
    cfg = write_config(tmp_path, tiny_model, [{"path": str(data)}])
    val = runner.invoke(app, ["validate-format", "-c", str(cfg), str(data), "--json"])
    assert val.exit_code == 1
    report = json.loads(val.stdout)
    assert [p["text"] for p in report["problems"]] == [f"{data}:5: duplicate: same row as line 2"]


@pytest.mark.parametrize("kind", ["csv", "parquet", "json", "sqlite", "hf"])
def test_validate_raw_sources_through_prepares_readers(
    kind: str, tmp_path: Path, tiny_model: Path
) -> None:
    src = SOURCES[kind](tmp_path)
    cfg = write_config(tmp_path, tiny_model, [src])
    val = runner.invoke(app, ["validate-format", "-c", str(cfg), src["path"], "--json"])
    assert val.exit_code == 0, val.output
    report = json.loads(val.stdout)
    assert report["rows"] == 8 and report["problems"] == []


def test_raw_source_problems_name_file_and_row(tmp_path: Path, tiny_model: Path) -> None:
    lines = (GOOD / "qa.csv").read_text().splitlines()
    lines[2] = "Which port does the router use?,,networking,8082"  # no answer on line 3
    data = tmp_path / "qa.csv"
    data.write_text("\n".join(lines) + "\n")
    cfg = write_config(
        tmp_path,
        tiny_model,
        [{"path": str(data), "columns": {"instruction": "question", "output": "answer"}}],
    )
    val = runner.invoke(app, ["validate-format", "-c", str(cfg), str(data), "--json"])
    assert val.exit_code == 1
    texts = [p["text"] for p in json.loads(val.stdout)["problems"]]
    # the message prepare gives for the same file (one reader)
    assert texts == [f"{data}:3: answer: column not found (have: question, topic, keywords)"]
    # a SQLite file needs the configured query; without one it is a usage error
    db = SOURCES["sqlite"](tmp_path)["path"]
    bare = write_config(tmp_path, tiny_model, [])
    res = runner.invoke(app, ["validate-format", "-c", str(bare), db])
    assert res.exit_code == 2 and "needs a query" in res.stderr
