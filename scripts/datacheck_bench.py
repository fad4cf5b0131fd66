"""Time `mlxtune prepare` and `validate-format` on N synthetic alpaca rows (issue 18's data-check
targets: 100,000 rows, validate-format under 15 s, prepare under 25 s). The workload and the
timing are `mlxtune bench --what data`'s (src/mlxtune/bench/datacheck.py); this script prints
them with CPU time beside wall time and can point at another checkout's interpreter.

    python scripts/datacheck_bench.py                # 100,000 rows, 3 interleaved repeats
    python scripts/datacheck_bench.py --rows 20000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mlxtune.bench.datacheck import (  # noqa: E402
    SPLITS,
    data_commands,
    prepared_rows,
    timed,
    write_workload,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="build/tiny-model", help="built if missing")
    parser.add_argument("--work", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="datacheck-"))
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.model, "config.json").is_file():
        cmd = [sys.executable, "-m", "mlxtune", "tiny-model", "--out", args.model]
        subprocess.run(cmd, check=True)
    config = write_workload(str(Path(args.model).resolve()), args.rows, work)
    cold = work / "cold"
    commands = data_commands(config, cold)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # interleaved: prepare, validate, cold, prepare, ...
        for name, cmd in commands.items():
            if name == "validate-format (cold)":
                cold.mkdir(exist_ok=True)
                for split in SPLITS:
                    shutil.copy(work / "prepared" / f"{split}.jsonl", cold)
            times[name].append(timed(cmd))
    print(f"{args.rows:,} source rows -> {prepared_rows(work):,} prepared rows")
    print(f"load {os.getloadavg()}")
    for name, pairs in times.items():
        walls, cpus = sorted(w for w, _ in pairs), sorted(c for _, c in pairs)
        print(
            f"{name:24s} wall min {walls[0]:.1f} med {statistics.median(walls):.1f} "
            f"max {walls[-1]:.1f} s | cpu min {cpus[0]:.1f} med {statistics.median(cpus):.1f} "
            f"max {cpus[-1]:.1f} s"
        )


if __name__ == "__main__":
    main()
