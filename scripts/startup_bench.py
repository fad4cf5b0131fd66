"""Time `mlxtune --help` and the verbs' `--help` from two checkouts, interleaved (issue 18's
start-up target: each under 0.15 s here).

    python scripts/startup_bench.py --before /work/main --after . --runs 10
    python scripts/startup_bench.py --before /work/main --after . --instructions
    python scripts/startup_bench.py --after . --via script   # the installed console script

Each run is a child process with PYTHONPATH=<tree>/src; the order is A B A B ... per command.
Prints wall and CPU (the child's user+sys) min / median / max per side, the ratio of the CPU
medians, and the load average before and after. `--instructions` counts each command's
instructions once under valgrind (callgrind) instead: the same count on a busy machine as on a
quiet one. `python -c pass` and `import typer` are the floor that `--help` cannot go below.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["train", "--help"], ["runs", "list", "--help"], ["config", "--help"])
FLOOR = (["-c", "pass"], ["-c", "import typer"])


def _command(via: str, args: list[str]) -> list[str]:
    if via == "script":  # the entry point pyproject installs beside the interpreter
        return [str(Path(sys.executable).with_name("mlxtune")), *args]
    return [sys.executable, "-m", "mlxtune", *args]


def _summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{ms[0]:.0f} / {statistics.median(ms):.0f} / {ms[-1]:.0f}"


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU = user + sys) seconds of the child. Not bench.datacheck.timed: that one puts
    this checkout's src first on the child's path, and here each side runs its own."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def _instructions(cmd: list[str]) -> float:
    """Millions of instructions the command runs (valgrind's callgrind; ~50x slower)."""
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    out = subprocess.run([*valgrind, *cmd], capture_output=True, text=True, check=True)
    refs = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if refs is None:
        sys.exit(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(refs.group(1).replace(",", "")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout to compare against (its src/)")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout to time")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--via", choices=("module", "script"), default="module")
    parser.add_argument("--instructions", action="store_true", help="count, do not time")
    args = parser.parse_args()
    sides = {"after": args.after.resolve()}
    if args.before:
        sides = {"before": args.before.resolve(), **sides}
    jobs = [(["python", *a], [sys.executable, *a]) for a in FLOOR]
    jobs += [(["mlxtune", *a], _command(args.via, a)) for a in COMMANDS]
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    runs = 1 if args.instructions else args.runs
    seen: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(runs):
        for label, cmd in jobs:
            for side, tree in sides.items():
                os.environ["PYTHONPATH"] = str(tree / "src")  # the child gets our environment
                figure = (_instructions(cmd), 0.0) if args.instructions else _timed(cmd)
                seen.setdefault((" ".join(label), side), []).append(figure)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    if args.instructions:
        print(f"instructions (millions) via {args.via}, valgrind callgrind")
        print("| command | side | instructions | vs before |\n|---|---|---|---|")
        for (label, side), figures in seen.items():
            base = seen.get((label, "before"))
            ratio = f"{figures[0][0] / base[0][0]:.2f}x" if base and side != "before" else ""
            print(f"| `{label}` | {side} | {figures[0][0]:.0f} M | {ratio} |")
        return
    print(f"{runs} interleaved runs via {args.via}; load average {load_before} -> {load_after}")
    print("ms min / median / max")
    print(
        "| command | side | wall | CPU (user+sys) | CPU median vs before |\n|---|---|---|---|---|"
    )
    for (label, side), figures in seen.items():
        cpu = [c for _, c in figures]
        base = seen.get((label, "before"))
        ratio = ""
        if base and side != "before":
            ratio = f"{statistics.median(cpu) / statistics.median(c for _, c in base):.2f}x"
        walls = _summary([w for w, _ in figures])
        print(f"| `{label}` | {side} | {walls} | {_summary(cpu)} | {ratio} |")


if __name__ == "__main__":
    main()
