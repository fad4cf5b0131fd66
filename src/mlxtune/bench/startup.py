"""bench `startup`: how long `mlxtune --help` and every verb's `--help` take as whole commands
(issue 18: under 0.15 s), beside raw mlx-lm's own `--help` where it has one.

Each command runs `bench.startup_runs` times per repeat in a fresh process with the user's
environment (no BLAS preload: a user typing `mlxtune --help` has none), after one untimed run
that leaves Python's bytecode cache written as any second run on a user's machine finds it;
the median is kept."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlxtune.bench.core import Progress, Recorder, Target
from mlxtune.console import command_paths
from mlxtune.errors import MlxtuneError
from mlxtune.runtime import user_environ

if TYPE_CHECKING:
    from mlxtune.config import Config

ROOT_CASE = "--help"
SLOWEST_CASE = "slowest verb --help"
# mlx-lm's counterparts: its command dispatcher, and its LoRA trainer beside `mlxtune train`.
BASELINE_ARGS = {ROOT_CASE: [], "train --help": ["lora"]}


def console_script(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter (what a user types), else
    `python -m module`."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def _env() -> dict[str, str]:
    # a sandbox's PYTHONDONTWRITEBYTECODE would recompile every module on every run
    dropped = ("LD_PRELOAD", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in user_environ().items() if k not in dropped}
    src = str(Path(__file__).resolve().parents[2])  # this checkout's mlxtune
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def time_help(cmd: list[str], runs: int) -> float:
    """Median wall seconds of `cmd --help` over `runs` fresh processes, after one untimed run."""
    env = _env()
    walls = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*cmd, "--help"], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
        )
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise MlxtuneError(f"{' '.join(cmd)} --help exited {proc.returncode}: {tail}")
    return statistics.median(walls[1:])


def bench_startup_once(cfg: Config, target: Target, rec: Recorder, say: Progress) -> str | None:
    """One repeat of one side. mlxtune: the root and every command; returns the slowest command's
    name. mlx-lm: its two counterparts."""
    runs = cfg.bench.startup_runs
    if target == "mlx-lm":
        base = console_script("mlx_lm", "mlx_lm")
        for case, args in BASELINE_ARGS.items():
            say(f"startup [mlx-lm] {case}")
            rec.add("startup", case, target, {"wall_ms": 1000 * time_help([*base, *args], runs)})
        return None
    base = console_script("mlxtune", "mlxtune")
    walls = {}
    for name, args in command_paths().items():
        say(f"startup [mlxtune] {name or 'root'} --help")
        walls[name] = time_help([*base, *args], runs)
    rec.add("startup", ROOT_CASE, target, {"wall_ms": 1000 * walls.pop("")})
    if "train" in walls:
        rec.add("startup", "train --help", target, {"wall_ms": 1000 * walls["train"]})
    slowest = max(walls, key=walls.__getitem__)
    rec.add("startup", SLOWEST_CASE, target, {"wall_ms": 1000 * walls[slowest]})
    return slowest
