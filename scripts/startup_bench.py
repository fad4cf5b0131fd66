"""Time `mlxtune --help` and the verbs' `--help` from two checkouts, interleaved (issue 18's
start-up target: each under 0.15 s here).

    python scripts/startup_bench.py --before /work/main --after . --runs 10
    python scripts/startup_bench.py --after . --via script   # the installed console script

Each run is a child process with PYTHONPATH=<tree>/src; the order is A B A B ... per command.
Prints wall and CPU (the child's user+sys) min / median / max per side, the ratio of the CPU
medians, and the load average before and after. `python -c pass` and `import typer` are the
floor: everything `--help` can save lies above them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from datacheck_bench import timed

COMMANDS = (["--help"], ["train", "--help"], ["runs", "list", "--help"], ["config", "--help"])
FLOOR = (["-c", "pass"], ["-c", "import typer"])


def _command(via: str, args: list[str]) -> list[str]:
    if via == "script":  # the entry point pyproject installs beside the interpreter
        return [str(Path(sys.executable).with_name("mlxtune")), *args]
    return [sys.executable, "-m", "mlxtune", *args]


def _summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{ms[0]:.0f} / {statistics.median(ms):.0f} / {ms[-1]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout to compare against (its src/)")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout to time")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--via", choices=("module", "script"), default="module")
    args = parser.parse_args()
    sides = {"after": args.after.resolve()}
    if args.before:
        sides = {"before": args.before.resolve(), **sides}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    jobs = [(["python", *a], [sys.executable, *a]) for a in FLOOR]
    jobs += [(["mlxtune", *a], _command(args.via, a)) for a in COMMANDS]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for label, cmd in jobs:
            for side, tree in sides.items():
                os.environ["PYTHONPATH"] = str(tree / "src")  # timed() passes our environment
                wall, cpu, _code = timed(cmd)
                times.setdefault((" ".join(label), side), []).append((wall, cpu))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{args.runs} interleaved runs via {args.via}; load average {' '.join(load_before)}")
    print(f"-> {' '.join(load_after)}; ms min / median / max")
    print("| command | side | wall | CPU (user+sys) | CPU median vs before |")
    print("|---|---|---|---|---|")
    for (label, side), runs in times.items():
        cpu = [c for _, c in runs]
        base = times.get((label, "before"))
        ratio = ""
        if base and side != "before":
            ratio = f"{statistics.median(cpu) / statistics.median(c for _, c in base):.2f}x"
        print(
            f"| `{label}` | {side} | {_summary([w for w, _ in runs])} | {_summary(cpu)} | {ratio} |"
        )


if __name__ == "__main__":
    main()
