"""MLX's fused CPU kernels built with vector flags (`cpu_kernels.py`): the same results bit for
bit as the wheel's own flags, kept apart from the kernels other programs build, and children
get the user's PATH and TMPDIR back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlxtune import cpu_kernels

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Fused kernels with each kind of arithmetic the training step has: exp and sigmoid (the
# vectorised exp), a * b + c (what contraction would fuse into one rounding), a division.
_SCRIPT = """
import json, os, sys, tempfile
import numpy as np
from mlxtune import cpu_kernels, runtime

before = tempfile.gettempdir()
status = cpu_kernels.use_vector_kernels() if sys.argv[2] == "on" else "off"
import mlx.core as mx

mx.random.seed(7)
a, b, c = (mx.random.normal((3, 1000)) * 4 for _ in range(3))
kernels = {
    "silu": mx.compile(lambda x: x * mx.sigmoid(x)),
    "exp": mx.compile(lambda x: mx.exp(x - 1.5)),
    "muladd": mx.compile(lambda x, y, z: x * y + z * 0.3),
    "adam": mx.compile(
        lambda m, g, v: (0.9 * m + 0.1 * g) / (mx.sqrt(0.999 * v + 0.001 * g * g) + 1e-8)
    ),
}
args = {"silu": (a,), "exp": (a,), "muladd": (a, b, c), "adam": (a, b, mx.abs(c))}
out = {name: np.array(f(*args[name])) for name, f in kernels.items()}
np.savez(sys.argv[1], **out)
child = runtime.subprocess_env()
print(json.dumps({
    "status": status,
    "python_tmp": tempfile.gettempdir(),
    "python_tmp_before": before,
    "child_tmpdir": child.get("TMPDIR"),
    "child_path": child.get("PATH"),
}))
"""


def _run(tmp_path: Path, mode: str, out: Path) -> dict[str, str]:
    script = tmp_path / "kernels.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "MLXTUNE_CACHE_DIR": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    env.pop(cpu_kernels.ENV, None)
    proc = subprocess.run(
        [sys.executable, str(script), str(out), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_vector_cpu = pytest.mark.skipif(
    not (
        sys.platform.startswith("linux")
        and cpu_kernels.cpu_has_vector_flags()
        and shutil.which("g++")
    ),
    reason="needs Linux x86 with AVX2, FMA and F16C, and g++ (what MLX compiles kernels with)",
)


@needs_vector_cpu
def test_vector_kernels_give_the_wheels_results_from_their_own_folder(tmp_path: Path) -> None:
    import numpy as np

    (tmp_path / "tmp").mkdir()
    plain = _run(tmp_path, "off", tmp_path / "plain.npz")
    vector = _run(tmp_path, "on", tmp_path / "vector.npz")
    assert plain["status"] == "off"
    assert vector["status"].startswith(cpu_kernels.FLAGS)

    with np.load(tmp_path / "plain.npz") as p, np.load(tmp_path / "vector.npz") as v:
        for name in p.files:
            assert np.array_equal(p[name], v[name]), name  # bit for bit, no contraction

    # The wheel's kernels in $TMPDIR/mlx, mlxtune's in its cache folder: built differently
    # (other bytes for the same kernel name), and neither folder holds the other's.
    plain_libs = {f.name: f for f in (tmp_path / "tmp").glob("mlx/*/cpu/*.so")}
    vector_libs = {f.name: f for f in (tmp_path / "cache").glob("cpu-kernels/mlx/*/cpu/*.so")}
    assert len(plain_libs) >= 4 and plain_libs.keys() == vector_libs.keys()
    assert any(plain_libs[n].read_bytes() != vector_libs[n].read_bytes() for n in plain_libs)

    # Python's temp files stay put; a child gets the user's TMPDIR and PATH, without the shim.
    assert vector["python_tmp"] == vector["python_tmp_before"] == str(tmp_path / "tmp")
    assert vector["child_tmpdir"] == str(tmp_path / "tmp")
    assert vector["child_path"] == os.environ["PATH"]


def test_the_cpu_flags_are_read_from_cpuinfo() -> None:
    line = "flags\t\t: fpu sse2 avx f16c fma avx2 bmi2\n"
    assert cpu_kernels.cpu_has_vector_flags("processor\t: 0\n" + line)
    assert not cpu_kernels.cpu_has_vector_flags(line.replace(" fma", ""))
    assert not cpu_kernels.cpu_has_vector_flags("Features\t: fp asimd\n")  # aarch64


def test_turned_off_or_unsupported_leaves_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu_kernels, "_status", "not set up")
    monkeypatch.setattr(cpu_kernels, "user_env", None)
    monkeypatch.setenv(cpu_kernels.ENV, "0")
    path, tmpdir = os.environ.get("PATH"), os.environ.get("TMPDIR")
    assert cpu_kernels.describe() == f"MLX's own flags ({cpu_kernels.ENV}=0)"  # changes nothing
    assert cpu_kernels.status() == "not set up"
    assert cpu_kernels.use_vector_kernels() == f"MLX's own flags ({cpu_kernels.ENV}=0)"
    assert (os.environ.get("PATH"), os.environ.get("TMPDIR")) == (path, tmpdir)
    monkeypatch.delenv(cpu_kernels.ENV)
    assert cpu_kernels.use_vector_kernels().endswith("=0)")  # decided once per process


def test_a_child_keeps_what_its_caller_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernels, "user_env", {"PATH": "/usr/bin", "TMPDIR": None})
    monkeypatch.setenv("PATH", "/shim:/usr/bin")
    monkeypatch.setenv("TMPDIR", "/cache/cpu-kernels")
    env = cpu_kernels.restore_user_env(
        {"PATH": "/shim:/usr/bin", "TMPDIR": "/chosen/by/caller", "HOME": "/h"}
    )
    assert env == {"PATH": "/usr/bin", "TMPDIR": "/chosen/by/caller", "HOME": "/h"}
    assert "TMPDIR" not in cpu_kernels.restore_user_env({"TMPDIR": "/cache/cpu-kernels"})
