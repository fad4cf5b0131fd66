"""`mlxtune doctor`: what this machine will do with a fine-tune, measured, with fixes."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mlxtune import runtime

# Below this the reference BLAS is in use and CPU training crawls (measured ~5 vs 100-200).
SLOW_BLAS_GFLOPS = 20.0


@dataclass
class Check:
    name: str
    value: str
    status: str = "ok"  # ok | warn | fail
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "facts": self.facts}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def measure_matmul_gflops(n: int = 512, repeats: int = 5) -> float:
    """fp32 n x n matmul throughput on MLX's default device."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b, a @ b)
    tic = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    elapsed = time.perf_counter() - tic
    return 2 * n**3 * repeats / elapsed / 1e9


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_name() -> str:
    import mlx.core as mx

    dev = mx.default_device()
    if dev.type == mx.gpu:
        if mx.metal.is_available():
            return "gpu (Metal)"
        return "gpu (CUDA)"
    return "cpu"


# MLX's Linux backends (mlxtune's extras install one each); macOS wheels carry Metal.
BACKENDS = ("mlx-cuda-13", "mlx-cuda-12", "mlx-cpu")
SWITCH_BACKEND = (
    "switch with pip install 'mlxtune[cuda12]' or 'mlxtune[cuda13]' (NVIDIA) or 'mlxtune[cpu]'"
)


def run_doctor() -> DoctorReport:
    report = DoctorReport()
    add = report.checks.append
    add(Check("platform", f"{platform.system()} {platform.machine()} ({platform.platform()})"))
    py_ok = sys.version_info >= (3, 10)
    add(
        Check(
            "python",
            platform.python_version(),
            "ok" if py_ok else "fail",
            "" if py_ok else "install Python 3.10 or newer",
        )
    )
    versions = {
        d: _version(d)
        for d in ("mlx", "mlx-cpu", "mlx-cuda-12", "mlx-cuda-13", "mlx-metal", "mlx-lm", "mlxtune")
    }
    report.facts["versions"] = versions
    for dist in ("mlx", "mlx-lm"):
        v = versions[dist]
        add(
            Check(
                dist,
                v or "missing",
                "ok" if v else "fail",
                "" if v else "make install (or pip install -e .)",
            )
        )
    backends = [b for b in BACKENDS if versions.get(b)]
    report.facts["backends_installed"] = backends
    if sys.platform.startswith("linux") and not backends:
        add(Check("mlx backend", "none installed", "fail", SWITCH_BACKEND))

    runtime.preload_openblas()
    try:
        dev = device_name()
        gflops = measure_matmul_gflops()
    except Exception as e:  # a broken MLX install is exactly what doctor is for
        add(Check("device", f"mlx failed to run: {e}", "fail", "reinstall mlx: make install"))
        return report
    add(Check("device", dev))
    if sys.platform.startswith("linux"):
        add(Check("backend", f"{dev} ({', '.join(backends)})", "ok", SWITCH_BACKEND))
    report.facts["matmul_gflops"] = round(gflops, 1)
    blas = runtime.blas_status()
    slow = dev == "cpu" and gflops < SLOW_BLAS_GFLOPS
    fix = ""
    if slow:
        fix = (
            "apt-get install libopenblas0-pthread (mlxtune loads it automatically)"
            if runtime.find_openblas() is None
            else f"unset {runtime.DISABLE_ENV}=0 so mlxtune can load OpenBLAS"
        )
    add(Check("blas", blas, "warn" if slow else "ok", fix))
    add(Check("matmul fp32 512", f"{gflops:.1f} GFLOP/s", "warn" if slow else "ok"))
    if dev == "cpu":
        from mlxtune import cpu_kernels

        kernels = cpu_kernels.status()  # set up when this command imported mlx
        report.facts["cpu_kernels"] = kernels
        add(Check("cpu kernels", kernels))
    mem = memory_bytes()
    add(Check("memory", f"{mem / 2**30:.1f} GiB" if mem else "unknown"))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    add(Check("hub cache", f"{hub} ({'exists' if hub.is_dir() else 'absent'})"))
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    add(
        Check(
            "hub access",
            "offline (HF_HUB_OFFLINE=1)" if offline else "online allowed",
            "ok",
            "",
        )
    )
    report.facts.update(
        device=dev,
        blas=blas,
        cpu_count=os.cpu_count(),
        memory_bytes=mem,
        hub_cache=str(hub),
        offline=offline,
    )
    return report
