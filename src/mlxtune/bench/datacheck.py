"""bench `data`: `mlxtune prepare` and `validate-format` as whole commands on synthetic rows
(issue 18: 100,000 rows, validate-format under 15 s, prepare under 25 s). raw mlx-lm has no
counterpart, so these figures stand alone, beside their targets.

Rows: 8 categories, 2% exact duplicates, 2% duplicates once case and punctuation are folded,
0.2% longer than 256 tokens. `validate-format` runs twice: on the prepared directory (it takes
the token lengths prepare measured, token_lengths.json) and "cold" on copies of the files
without them."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlxtune.bench.core import Progress, Recorder
from mlxtune.bench.procs import child_env, cli_command, tail
from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config

CATEGORIES = ("billing", "shipping", "returns", "account", "privacy", "api", "pricing", "ui")
WORDS = ["order", "refund", "invoice", "parcel", "courier", "password", "token", "export"]
WORDS += ["import", "region", "plan", "seat", "discount", "tax", "receipt", "label", "address"]
WORDS += ["limit", "quota", "webhook", "schema", "latency", "backup", "team"]
SPLITS = ("train", "valid", "test")


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` alpaca rows with the duplicate and too-long mix above, the same for a given seed."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.02:  # exact duplicate
            out.append(dict(rng.choice(out)))
            continue
        if out and roll < 0.04:  # duplicate once case and punctuation are folded
            row = dict(rng.choice(out))
            row["instruction"] = row["instruction"].upper().rstrip("?") + " ?"
            out.append(row)
            continue
        words = rng.choices(WORDS, k=rng.randint(6, 18))
        answer_words = rng.choices(WORDS, k=rng.randint(8, 40))
        if roll > 0.998:  # too long for max_seq_length 256
            answer_words = rng.choices(WORDS, k=400)
        out.append(
            {
                "instruction": f"Question {i}: how do I {' '.join(words)}?",
                "input": "",
                "output": " ".join(answer_words).capitalize() + ".",
                "category": CATEGORIES[i % len(CATEGORIES)],
            }
        )
    return out


def write_workload(model: str, rows: int, work: Path) -> Path:
    """The synthetic source and a config preparing it into work/prepared; returns the config."""
    source = work / "synth.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(rows)))
    config = work / "datacheck.yaml"
    config.write_text(
        f"model: {{path: {json.dumps(model)}}}\n"
        f"data: {{dir: {json.dumps(str(work / 'prepared'))}}}\n"
        f"prepare: {{sources: [{{path: {json.dumps(str(source))}}}]}}\n"
        "train: {max_seq_length: 256}\n"
    )
    return config


def data_commands(config: Path, cold: Path) -> dict[str, list[str]]:
    """case -> the command, in the order one repeat runs them."""
    cli = cli_command()
    return {
        "prepare": [*cli, "prepare", "-c", str(config), "--force"],
        "validate-format": [*cli, "validate-format", "-c", str(config)],
        "validate-format (cold)": [*cli, "validate-format", "-c", str(config), str(cold)],
    }


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU = user + sys) seconds of a child run to completion (`env` over child_env's).
    Exit 1 is allowed: validate-format reports the planted too-long rows with it."""
    # stderr to a file, not a pipe: a child reporting more than a pipe holds would block
    # forever while this waits for it
    with tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file, env=child_env(env))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise MlxtuneError(f"{' '.join(cmd[2:4])} exited {code}: {tail(err.splitlines())}")
    return wall, usage.ru_utime + usage.ru_stime


def prepared_rows(work: Path) -> int:
    return sum(
        len((work / "prepared" / f"{s}.jsonl").read_text().splitlines())
        for s in SPLITS
        if (work / "prepared" / f"{s}.jsonl").is_file()
    )


def bench_data(cfg: Config, work: Path, rec: Recorder, repeat: int, say: Progress) -> str:
    """Every repeat runs prepare, validate-format and the cold validate-format in turn; returns
    a note naming the rows checked."""
    work = work / "data"
    work.mkdir(parents=True, exist_ok=True)
    rows = cfg.bench.data_rows
    say(f"data: writing {rows:,} synthetic rows")
    config = write_workload(str(Path(cfg.model.path).resolve()), rows, work)
    cold = work / "cold"
    for r in range(repeat):
        for case, cmd in data_commands(config, cold).items():
            if case == "validate-format (cold)":
                cold.mkdir(exist_ok=True)
                for split in SPLITS:
                    shutil.copy(work / "prepared" / f"{split}.jsonl", cold)
            say(f"data {case} repeat {r + 1}/{repeat}")
            wall, cpu = timed(cmd)
            rec.add("data", case, "mlxtune", {"wall_s": wall, "cpu_s": cpu})
    return f"data: {rows:,} synthetic source rows -> {prepared_rows(work):,} prepared rows"
