"""runs/report/export without -c say where they looked and write nothing; a killed run is
shown as interrupted, not running forever (issue 19)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from conftest import run_cli
from fake_runs import fabricate_run, project_config


def test_reads_without_a_config_write_nothing_and_say_where_they_looked(tmp_path: Path) -> None:
    for args in (["runs", "list"], ["report", "r1"], ["export", "r1", "--out", "fused"]):
        proc = run_cli(*args, cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert f"{tmp_path / 'runs'}" in out, (args, out)
        assert "--set train.runs_dir=DIR" in out, (args, out)
        assert "Traceback" not in out
        assert list(tmp_path.iterdir()) == [], args  # no .mlxtune/, no runs/, no fused/


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_run_is_interrupted_not_running(tmp_path: Path) -> None:
    cfg = project_config(tmp_path)
    runs = tmp_path / "runs"
    for name, pid in (("killed", _dead_pid()), ("alive", os.getpid())):
        root = fabricate_run(runs, name, status="running")
        info = json.loads((root / "run.json").read_text())
        info.update(pid=pid, host=platform.node())
        (root / "run.json").write_text(json.dumps(info))
    listed = run_cli("runs", "list", "-c", str(cfg), "--json")
    assert listed.returncode == 0, listed.stderr
    status = {r["name"]: r["status"] for r in json.loads(listed.stdout)}
    assert status == {"killed": "interrupted", "alive": "running"}
    shown = run_cli("runs", "show", "killed", "-c", str(cfg))
    assert f"resume it: mlxtune train --resume {runs.resolve() / 'killed'}" in shown.stdout
