"""`mlxtune train --launch N`: run the same command on N ranks under mlx.launch, then check
every rank's status file, because mlx.launch itself exits 0 even when a rank failed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxtune.errors import MlxtuneError
from mlxtune.io import atomic_write_json

STATUS_DIR_ENV = "MLXTUNE_STATUS_DIR"  # set by `--launch`: each rank reports here
LAUNCHER_OPTIONS = ("--launch", "--hostfile", "--backend")


@dataclass
class LaunchResult:
    returncode: int
    ranks: dict[int, dict[str, Any]]
    failed: list[str]


def strip_launch_args(args: list[str]) -> list[str]:
    """The user's train arguments minus the launcher's own (--launch/--hostfile/--backend)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in LAUNCHER_OPTIONS:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def launch(
    train_args: list[str],
    n: int,
    *,
    backend: str = "ring",
    hostfile: Path | None = None,
    status_dir: Path,
) -> LaunchResult:
    """Run `mlxtune train ARGS` on N local ranks (or a hostfile) under mlx.launch and check
    every rank's status file: mlx.launch itself exits 0 even when a rank failed."""
    from mlxtune.runtime import subprocess_env

    status_dir.mkdir(parents=True, exist_ok=True)
    for old in status_dir.glob("rank*.json"):
        old.unlink()
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or "mlx.launch"
    cmd = [launcher, "--backend", backend]
    cmd += ["--hostfile", str(hostfile)] if hostfile else ["-n", str(n)]
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the mlxtune package
    env = subprocess_env()
    env[STATUS_DIR_ENV] = str(status_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for key in (STATUS_DIR_ENV, "PYTHONPATH", "LD_PRELOAD"):
        if env.get(key):
            cmd += ["--env", f"{key}={env[key]}"]
    cmd += ["--", sys.executable, "-m", "mlxtune", "train", *train_args]
    proc = subprocess.run(cmd, env=env, check=False)
    ranks: dict[int, dict[str, Any]] = {}
    for p in status_dir.glob("rank*.json"):
        info = json.loads(p.read_text())
        ranks[int(info["rank"])] = info
    failed = []
    for r in range(n):
        info = ranks.get(r)
        if info is None:
            failed.append(f"rank {r}: exited without reporting (crashed or killed)")
        elif info["status"] not in ("completed", "planned"):
            failed.append(f"rank {r}: {info['status']}: {info.get('error')}")
    return LaunchResult(returncode=proc.returncode, ranks=ranks, failed=failed)


def check_launch(result: LaunchResult) -> None:
    if result.failed or result.returncode != 0:
        lines = result.failed or [f"mlx.launch exited with {result.returncode}"]
        raise MlxtuneError("distributed run failed: " + "; ".join(lines))


def report_status(rank: int, status: str, error: str | None = None) -> None:
    """Under `--launch`, this rank's outcome for `launch()` to read."""
    where = os.environ.get(STATUS_DIR_ENV)
    if where:
        atomic_write_json(
            Path(where) / f"rank{rank}.json", {"rank": rank, "status": status, "error": error}
        )
