"""Time `mlxtune prepare` and `validate-format` on N synthetic alpaca rows (issue 18's data-check
targets: 100,000 rows, validate-format under 15 s, prepare under 25 s).

    python scripts/datacheck_bench.py                # 100,000 rows, 3 interleaved repeats
    python scripts/datacheck_bench.py --rows 20000 --repeat 1

Rows: 8 categories, 2% exact duplicates, 2% duplicates after case/punctuation folding, 0.2%
longer than 256 tokens (the prepare figures in docs/benchmarks.md use the same mix). Each
command runs as a child process (start-up included); wall and CPU (user+sys) are printed with
the load average. `validate-format` runs twice: on the prepared directory (it takes the token
lengths prepare measured, token_lengths.json) and "cold" on copies of the files without them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = ("billing", "shipping", "returns", "account", "privacy", "api", "pricing", "ui")
WORDS = ["order", "refund", "invoice", "parcel", "courier", "password", "token", "export"]
WORDS += ["import", "region", "plan", "seat", "discount", "tax", "receipt", "label", "address"]
WORDS += ["limit", "quota", "webhook", "schema", "latency", "backup", "team"]


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
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


def timed(cmd: list[str]) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: validate-format found the planted too-long rows
        sys.exit(f"{' '.join(cmd)} exited {code}:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="build/tiny-model", help="built if missing")
    parser.add_argument("--work", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="datacheck-"))
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "mlxtune"]
    if not Path(args.model, "config.json").is_file():
        subprocess.run([*py, "tiny-model", "--out", args.model], check=True)
    source = work / "synth.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows)))
    config = work / "bench.yaml"
    config.write_text(
        f"model: {{path: {Path(args.model).resolve()}}}\n"
        f"data: {{dir: {work / 'prepared'}}}\n"
        f"prepare: {{sources: [{{path: {source}}}]}}\n"
        "train: {max_seq_length: 256}\n"
    )
    # validate-format of the prepared dir uses the lengths prepare measured
    # (token_lengths.json); "cold" checks copies of the same files without it
    cold = work / "cold"
    commands = {
        "prepare": [*py, "prepare", "-c", str(config), "--force"],
        "validate-format": [*py, "validate-format", "-c", str(config)],
        "validate (cold)": [*py, "validate-format", "-c", str(config), str(cold)],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # interleaved: prepare, validate, cold, prepare, ...
        for name, cmd in commands.items():
            if name == "validate (cold)":
                cold.mkdir(exist_ok=True)
                for split in ("train", "valid", "test"):
                    shutil.copy(work / "prepared" / f"{split}.jsonl", cold)
            wall, cpu, _ = timed(cmd)
            times[name].append((wall, cpu))
    splits = [work / "prepared" / f"{s}.jsonl" for s in ("train", "valid", "test")]
    prepared = sum(len(p.read_text().splitlines()) for p in splits)
    print(f"{args.rows:,} source rows -> {prepared:,} prepared rows; load {os.getloadavg()}")
    for name, pairs in times.items():
        walls, cpus = sorted(w for w, _ in pairs), sorted(c for _, c in pairs)
        print(
            f"{name:16s} wall min {walls[0]:.1f} med {statistics.median(walls):.1f} "
            f"max {walls[-1]:.1f} s | cpu min {cpus[0]:.1f} med {statistics.median(cpus):.1f} "
            f"max {cpus[-1]:.1f} s"
        )


if __name__ == "__main__":
    main()
