"""Time `mlxtune prepare` and `validate-format` on N synthetic alpaca rows (issue 18's data-check
targets: 100,000 rows, validate-format under 15 s, prepare under 25 s). The workload and the
timing are `mlxtune bench --what data`'s (src/mlxtune/bench/datacheck.py); this script prints
them with CPU time beside wall time and the load average, and with `--against` runs another
checkout's code on the same rows, interleaved (A B A B ...), with the ratio of the medians.

    python scripts/datacheck_bench.py                         # 100,000 rows, 3 repeats
    python scripts/datacheck_bench.py --rows 20000 --repeat 1
    python scripts/datacheck_bench.py --against /work/main    # main (before) beside this tree
    python scripts/datacheck_bench.py --against /work/main --cases prepare

Children run with TOKENIZERS_PARALLELISM=false (as `make bench`) unless it is set already;
`--parallel` sets it true, which is what an unset variable means in a process that has not
forked (a user's default environment).
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


def _spread(values: list[float]) -> str:
    v = sorted(values)
    return f"{v[0]:.1f} / {statistics.median(v):.1f} / {v[-1]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="build/tiny-model", help="built if missing")
    parser.add_argument("--work", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--against", type=Path, default=None, help="another checkout's root")
    parser.add_argument("--parallel", action="store_true", help="TOKENIZERS_PARALLELISM=true")
    parser.add_argument(
        "--cases", default=None, help="comma-separated: prepare, validate-format, ... (all)"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="datacheck-"))
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.model, "config.json").is_file():
        cmd = [sys.executable, "-m", "mlxtune", "tiny-model", "--out", args.model]
        subprocess.run(cmd, check=True)
    # side -> PYTHONPATH its children import mlxtune from (None: this checkout, child_env's)
    sides: dict[str, str | None] = {"this": None}
    if args.against:
        sides = {"against": str(args.against.resolve() / "src"), **sides}
    env_extra = {"TOKENIZERS_PARALLELISM": "true"} if args.parallel else {}
    model = str(Path(args.model).resolve())
    plans = {}
    for side in sides:
        (work / side).mkdir(exist_ok=True)
        config = write_workload(model, args.rows, work / side)
        plans[side] = (config, work / side / "cold", data_commands(config, work / side / "cold"))
    cases = list(plans["this"][2])
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",")]
        unknown = [c for c in wanted if c not in cases]
        if unknown:
            parser.error(f"--cases: unknown {', '.join(unknown)} (have: {', '.join(cases)})")
        if "prepare" not in wanted:  # the others check what prepare wrote
            wanted.insert(0, "prepare")
        cases = [c for c in cases if c in wanted]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    loads = [os.getloadavg()]
    for _ in range(args.repeat):  # interleaved: each case, each side, then the next repeat
        for case in cases:
            for side, src in sides.items():
                config, cold, commands = plans[side]
                if case.endswith("(cold)"):
                    cold.mkdir(exist_ok=True)
                    for split in SPLITS:
                        shutil.copy(config.parent / "prepared" / f"{split}.jsonl", cold)
                env = {**env_extra, **({"PYTHONPATH": src} if src else {})}
                times.setdefault((case, side), []).append(timed(commands[case], env))
        loads.append(os.getloadavg())
    print(f"{args.rows:,} source rows -> {prepared_rows(work / 'this'):,} prepared rows")
    print("load average (1/5/15 min) at the start and after each repeat:")
    print("  " + "  ".join(f"{a:.1f}/{b:.1f}/{c:.1f}" for a, b, c in loads))
    parallel = "true" if args.parallel else os.environ.get("TOKENIZERS_PARALLELISM", "false")
    print(f"TOKENIZERS_PARALLELISM={parallel}")
    print(f"{'case':24s} {'side':8s} {'wall min/med/max s':>20s} {'CPU min/med/max s':>20s}")
    for case in cases:
        for side in sides:
            pairs = times[(case, side)]
            walls, cpus = [w for w, _ in pairs], [c for _, c in pairs]
            print(f"{case:24s} {side:8s} {_spread(walls):>20s} {_spread(cpus):>20s}")
        if args.against:
            ratio = {
                k: statistics.median(x[k] for x in times[(case, "this")])
                / statistics.median(x[k] for x in times[(case, "against")])
                for k in (0, 1)
            }
            print(f"{'':24s} {'ratio':8s} {ratio[0]:>19.2f}x {ratio[1]:>19.2f}x")


if __name__ == "__main__":
    main()
