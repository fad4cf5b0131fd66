"""MLX's fused CPU kernels built with the vector flags MLX itself uses on an AVX2 build.

On the CPU, `mx.compile` fuses chains of elementwise ops (SiLU's sigmoid, the loss's
exponentials, RMSNorm's scaling) into C++ kernels it compiles at run time with `g++ -O3`
(mlx/backend/cpu/jit_compiler.cpp), and adds `-mavx2 -mfma -mf16c` only when MLX itself was
built for AVX2. Its portable Linux wheel is not, so every exponential in those kernels runs in
scalar code calling libm's `fmaf`, ~25 ns each here. On a CPU that has the three extensions,
the `mlxtune` command passes MLX's own flags through a `g++` shim put first on PATH, with
contraction off: the same results bit for bit (tests/test_cpu_kernels.py),
the exp and SiLU kernels 2-3.5x faster (docs/benchmarks.md).

MLX caches a kernel under `$TMPDIR/mlx/<version>/cpu/` by name alone, so kernels built with
other flags must not share that folder: mlxtune's live under its cache folder
(`runtime.cache_dir()/cpu-kernels`), which also outlives the reboots that empty /tmp (a cold
cache costs ~0.7 s of g++ per kernel, ~20 s for a first training run). Python's own temporary
files stay where they were, and child processes (raw mlx-lm baselines, servers) get the
user's PATH and TMPDIR back through `runtime.subprocess_env`. `MLXTUNE_CPU_KERNELS=0` keeps
MLX's flags.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

ENV = "MLXTUNE_CPU_KERNELS"  # "0": MLX's own compiler flags and kernel folder
# MLX's AVX2 flags (mlx/backend/cpu/jit_compiler.cpp, built with __AVX2__), and no contraction:
# g++ fuses `a * b + c` into one FMA in C++ by default, which rounds once where the wheel's
# kernels round twice; with it off every kernel gives the wheel's results bit for bit.
FLAGS = "-mavx2 -mfma -mf16c -ffp-contract=off"
_REQUIRED = ("avx2", "fma", "f16c")  # /proc/cpuinfo's names for them

# What the process had before `use_vector_kernels` changed it: None when unchanged.
user_env: dict[str, str | None] | None = None
_status = "not set up"


def cpu_has_vector_flags(cpuinfo: str | None = None) -> bool:
    """Whether the CPU lists AVX2, FMA and F16C (Linux x86 only; anything else: False)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return all(f in flags for f in _REQUIRED)
    return False


def use_vector_kernels() -> str:
    """Point MLX's CPU kernel compiler at the shim and the kernels at mlxtune's folder, once
    per process, where the platform, CPU and a `g++` allow it. Returns what was done, for
    `doctor` and the bench notes."""
    global _status
    if _status == "not set up":
        _status = _why_not() or _install()
    return _status


def status() -> str:
    return _status


def describe() -> str:
    """What an `mlxtune` command on this machine uses: this process's status once set up,
    else what `use_vector_kernels` would decide (without changing anything)."""
    if _status != "not set up":
        return _status
    return _why_not() or FLAGS


def _why_not() -> str | None:
    if os.environ.get(ENV) == "0":
        return f"MLX's own flags ({ENV}=0)"
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return "MLX's own flags (not Linux x86)"
    if not cpu_has_vector_flags():
        return "MLX's own flags (the CPU lacks AVX2, FMA or F16C)"
    if shutil.which("g++") is None:  # what MLX compiles with; without it, nothing to shim
        return "MLX's own flags (no g++ on PATH)"
    return None


def _install() -> str:
    global user_env
    import tempfile

    from mlxtune.runtime import cache_dir

    compiler = shutil.which("g++") or "g++"  # found by `_why_not`
    root = (cache_dir() or Path(tempfile.gettempdir()) / "mlxtune") / "cpu-kernels"
    shim = root / "bin" / "g++"
    try:
        _write_shim(shim, compiler)
    except OSError as e:
        return f"MLX's own flags (cannot write {shim}: {e.strerror})"
    tempfile.tempdir = tempfile.gettempdir()  # Python's temp files stay where they were
    user_env = {k: os.environ.get(k) for k in ("PATH", "TMPDIR")}
    os.environ["PATH"] = os.pathsep.join(p for p in (str(shim.parent), user_env["PATH"]) if p)
    os.environ["TMPDIR"] = str(root)  # MLX keeps kernels in $TMPDIR/mlx/<version>/cpu
    return f"{FLAGS} (kernels in {root})"


def _write_shim(shim: Path, compiler: str) -> None:
    """A `g++` that runs `compiler` with FLAGS first; rewritten only when it differs, through
    a temp file and a rename so a concurrent process never runs half of it."""
    text = f'#!/bin/sh\nexec "{compiler}" {FLAGS} "$@"\n'
    try:
        if shim.read_text(encoding="utf-8") == text and os.access(shim, os.X_OK):
            return
    except OSError:
        pass
    shim.parent.mkdir(parents=True, exist_ok=True)
    tmp = shim.with_name(f".g++.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o755)
    os.replace(tmp, shim)


def restore_user_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the user's PATH and TMPDIR back where it holds this process's changed ones,
    for a child process: raw mlx-lm must neither build nor find these kernels, and an mlxtune
    child sets them up itself."""
    if user_env is None:
        return env
    for key, value in user_env.items():
        if env.get(key) != os.environ.get(key):
            continue  # the caller chose its own
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
