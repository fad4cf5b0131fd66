"""Where a result came from: package versions and the git commit. One helper for train's
run.json, evaluate's report and bench's environment block."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The packages whose versions decide a result; keys as run.json and reports spell them.
TRACKED = {"mlx": "mlx", "mlx_lm": "mlx-lm", "mlxtune": "mlxtune"}


def package_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """{mlx, mlx_lm, mlxtune} -> version ("unknown" when not installed as a distribution)."""
    return {key: package_version(dist) or "unknown" for key, dist in TRACKED.items()}


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit checked out in `cwd` (the current directory by default), with `-dirty` when
    the tree has changes; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=cwd,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
