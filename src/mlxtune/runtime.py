"""Process set-up that must happen before `mlx.core` is imported.

MLX's Linux CPU wheel links a reference BLAS (~5 GFLOP/s here). Loading OpenBLAS with
RTLD_GLOBAL first makes MLX's `sgemm` calls resolve to it (100-200 GFLOP/s, 15-27x faster
training). `mlxtune/__init__.py` installs `preload_openblas_before_mlx()`, so every entry point
gets it the moment anything first imports `mlx`, and commands that never touch mlx (`--help`)
skip the ~15 ms dlopen.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

DISABLE_ENV = "MLXTUNE_OPENBLAS"  # "0" disables; a path picks a specific library
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_loaded: str | None = None
_status = "not attempted"


def find_openblas() -> str | None:
    choice = os.environ.get(DISABLE_ENV, "")
    if choice and choice not in ("0", "1"):
        return choice if Path(choice).exists() else None
    return next((p for p in OPENBLAS_CANDIDATES if Path(p).exists()), None)


def preload_openblas() -> str | None:
    """Load OpenBLAS globally on Linux, once. Returns the path loaded, or None."""
    global _loaded, _status
    if _loaded or _status != "not attempted":
        return _loaded
    if not sys.platform.startswith("linux"):
        _status = "not needed (MLX uses Accelerate/Metal here)"
        return None
    if os.environ.get(DISABLE_ENV) == "0":
        _status = f"disabled by {DISABLE_ENV}=0"
        return None
    if "mlx.core" in sys.modules and "openblas" not in os.environ.get("LD_PRELOAD", ""):
        _status = "too late: mlx.core was imported before mlxtune"
        return None
    path = find_openblas()
    if path is None:
        _status = "OpenBLAS not found (apt-get install libopenblas0-pthread)"
        return None
    import ctypes

    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        _status = f"failed to load {path}: {e}"
        return None
    _loaded = path
    _status = f"loaded {path}"
    return path


class _PreloadBeforeMlx:
    """A meta path finder that finds nothing: it loads OpenBLAS when `mlx` is first looked up
    (before `mlx.core`'s shared library is loaded), then removes itself."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "mlx" or name.startswith("mlx."):
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            preload_openblas()
        return None


def preload_openblas_before_mlx() -> None:
    """Load OpenBLAS now if mlx is already imported (too late is reported), else on first
    `import mlx`."""
    if "mlx" in sys.modules:
        preload_openblas()
    elif not any(isinstance(f, _PreloadBeforeMlx) for f in sys.meta_path):
        sys.meta_path.insert(0, _PreloadBeforeMlx())


def blas_threads(n: int | None = None) -> int | None:
    """OpenBLAS's thread count, after setting it to `n` when given; None when no OpenBLAS
    was loaded (macOS, MLXTUNE_OPENBLAS=0) and nothing was changed."""
    if _loaded is None:
        return None
    import ctypes

    lib = ctypes.CDLL(_loaded)  # already loaded: the same library, not a second copy
    if n is not None:
        lib.openblas_set_num_threads(n)
    return int(lib.openblas_get_num_threads())


def resolve_blas_threads(setting: int) -> int:
    """`serve.blas_threads`: as set, else OPENBLAS_NUM_THREADS, else one fewer than the CPUs
    this process may use (at least 1). On 2 cores a 2-thread matmul waits, every step, for
    whichever half the event loop or a tokenizer thread preempted."""
    if setting:
        return setting
    env = os.environ.get("OPENBLAS_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) - 1)


def blas_status() -> str:
    return _status


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes (raw mlx-lm baselines, servers) with the same BLAS."""
    preload_openblas()  # the child needs the path even if this process never imported mlx
    out = dict(os.environ if env is None else env)
    if _loaded and _loaded not in out.get("LD_PRELOAD", ""):
        out["LD_PRELOAD"] = ":".join(p for p in (_loaded, out.get("LD_PRELOAD")) if p)
    return out


def wait_until_ready(proc: subprocess.Popen[Any], url: str, timeout: float) -> str | None:
    """Poll `url` until it answers 200. Returns None when ready, else why not: the process
    exited, or `timeout` seconds passed. Servers started by bench, tests and scripts use this."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return None
        time.sleep(0.2)
    return f"not ready after {timeout:g} s"
