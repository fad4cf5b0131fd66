"""The `mlxtune` process as one command: `runtime.long_lived` freezes what model loading made
out of the cyclic GC, and `runtime.exit_now` skips the interpreter's teardown without losing
output, atexit work or a thread still running."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlxtune import runtime

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_script(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )


def test_long_lived_outside_a_command_changes_nothing() -> None:
    frozen = gc.get_freeze_count()
    with runtime.long_lived():
        assert gc.isenabled()
        kept = [[i] for i in range(100)]
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    assert kept


@pytest.mark.parametrize("enabled_before", [True, False])
def test_long_lived_in_a_command_pauses_then_freezes(
    monkeypatch: pytest.MonkeyPatch, enabled_before: bool
) -> None:
    monkeypatch.setattr(runtime, "_one_command", True)
    monkeypatch.setattr(runtime, "_frozen", False)
    if not enabled_before:
        gc.disable()
    try:
        with runtime.long_lived():
            assert not gc.isenabled()
            loaded = [[i] for i in range(1000)]  # what a model load would leave behind
        assert gc.get_freeze_count() >= len(loaded)
        assert gc.isenabled() == enabled_before
    finally:
        gc.unfreeze()
        gc.enable()


def test_long_lived_freezes_only_the_first_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later load (an adapter a server loads between requests) pauses the GC but freezes
    nothing: the requests' objects alive then must stay collectable."""
    monkeypatch.setattr(runtime, "_one_command", True)
    monkeypatch.setattr(runtime, "_frozen", False)
    try:
        with runtime.long_lived():
            first = [[i] for i in range(1000)]
        frozen = gc.get_freeze_count()
        with runtime.long_lived():
            assert not gc.isenabled()
            later = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == frozen
        assert gc.isenabled()
        assert first and later
    finally:
        gc.unfreeze()
        gc.enable()


def test_long_lived_restores_the_gc_when_loading_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_one_command", True)
    monkeypatch.setattr(runtime, "_frozen", False)
    try:
        with pytest.raises(ValueError), runtime.long_lived():
            raise ValueError("cannot load")
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_exit_now_keeps_output_atexit_work_and_the_code(tmp_path: Path) -> None:
    marker = tmp_path / "atexit.txt"
    proc = run_script(
        f"""
        import atexit, sys
        from mlxtune.runtime import run_as_command
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        def command():
            sys.stdout.write("partial line, no newline")  # still in the buffer at exit
            sys.exit(3)
        run_as_command(command)
        print("never reached")
        """,
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "partial line, no newline"
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(("code", "rc", "stderr"), [(None, 0, ""), ("bad flag", 1, "bad flag")])
def test_exit_now_codes_like_sys_exit(
    tmp_path: Path, code: str | None, rc: int, stderr: str
) -> None:
    proc = run_script(
        f"""
        import sys
        from mlxtune.runtime import run_as_command
        run_as_command(lambda: sys.exit({code!r}))
        """,
        tmp_path,
    )
    assert proc.returncode == rc
    assert proc.stderr.strip() == stderr


def test_exit_now_waits_for_a_running_thread(tmp_path: Path) -> None:
    """A non-daemon thread still working when the command returns finishes, as with a normal
    exit: `exit_now` falls back to `sys.exit` rather than cut it off."""
    marker = tmp_path / "thread.txt"
    proc = run_script(
        f"""
        import threading, time
        from mlxtune.runtime import run_as_command
        def work():
            time.sleep(0.3)
            open({str(marker)!r}, "w").write("done")
        run_as_command(lambda: threading.Thread(target=work).start())
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "done"


def test_a_failing_verb_still_exits_with_its_code(tmp_path: Path) -> None:
    """Through the real entry point: a usage error is one line and exit 2, nothing lost."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-m", "mlxtune", "train", "-c", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "missing.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_now_lets_a_profiler_write_its_report(tmp_path: Path) -> None:
    """`python -m cProfile -o FILE` writes FILE after the program returns: under a profiler
    the exit is a normal one."""
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\nfrom mlxtune.runtime import run_as_command\n"
        "run_as_command(lambda: sys.exit(0))\n"
    )
    report = tmp_path / "profile.out"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(report), str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert report.stat().st_size > 0


def test_transformers_scans_its_model_folders_once(tmp_path: Path) -> None:
    """Importing mlxtune first widens transformers' folder-scan cache, so the second pass over
    transformers/models (mlx-lm's `from transformers import AutoTokenizer`) is all hits."""
    proc = run_script(
        """
        import mlxtune
        from transformers import AutoTokenizer
        from transformers.utils import import_utils
        info = import_utils.create_import_structure_from_path.cache_info()
        print(info.hits, info.misses, info.maxsize)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    hits, misses, maxsize = proc.stdout.split()
    assert maxsize == "None"
    assert int(hits) >= int(misses) - 10  # every folder but the few top-level entries


def test_widening_leaves_other_functions_alone() -> None:
    import functools
    import types

    calls: list[int] = []

    @functools.lru_cache(maxsize=2)
    def create_import_structure_from_path(n: int) -> int:
        calls.append(n)
        return n * 2

    module = types.SimpleNamespace(
        create_import_structure_from_path=create_import_structure_from_path
    )
    assert runtime.widen_folder_scan_cache(module)  # type: ignore[arg-type]
    widened = module.create_import_structure_from_path
    for n in [1, 2, 3, 1, 2, 3]:
        assert widened(n) == n * 2
    assert calls == [1, 2, 3]  # maxsize=2 would have called again for 1 and 2
    assert not runtime.widen_folder_scan_cache(module)  # type: ignore[arg-type]  # unbounded now
    assert not runtime.widen_folder_scan_cache(types.SimpleNamespace())  # type: ignore[arg-type]


def test_exit_now_still_removes_temporary_directories(tmp_path: Path) -> None:
    """`tempfile.TemporaryDirectory` cleans up through `weakref.finalize`'s atexit hook, which
    the fast exit runs: nothing is left behind in the temp dir."""
    proc = run_script(
        f"""
        import sys, tempfile
        from mlxtune.runtime import run_as_command
        held = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})
        open(held.name + "/partial.bin", "wb").write(b"x")
        run_as_command(lambda: sys.exit(0))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["script.py"]
