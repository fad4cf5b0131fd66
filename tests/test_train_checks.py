"""train behaviour the docs promise (issue 19): resume checks, dry-run warnings, best/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from mlxtune.rundir import RunDir, read_metrics
from test_train import _config


@pytest.mark.e2e
def test_best_is_lowest_val_loss_and_resume_of_completed_run_is_a_noop(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    # min_delta larger than any drop: patience never resets, yet best/ must follow the loss
    cfg = _config(
        tmp_path,
        tiny_model,
        domain_data,
        iters=6,
        steps_per_eval=2,
        save_every=2,
        lora_dropout=0.0,
        early_stopping_patience=10,
        early_stopping_min_delta=10.0,
    )
    proc = run_cli("train", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "t")
    vals = [(r["step"], r["val_loss"]) for r in read_metrics(run.metrics) if "val_loss" in r]
    assert len(vals) == 3 and vals[-1][1] < vals[0][1]
    low_step, low = min(vals, key=lambda sv: sv[1])
    final = run.read_run()["final"]
    assert (final["best_step"], final["best_val_loss"]) == (low_step, pytest.approx(low))

    before = run.run_json.read_bytes()
    again = run_cli("train", "--resume", str(run.root))
    assert again.returncode == 0, again.stderr
    assert "already completed (6 steps); nothing to resume" in again.stderr
    assert run.run_json.read_bytes() == before


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": str(tmp_path / "none")}}))
    (run / "run.json").write_text(json.dumps({"name": "t", "status": "stopped"}))
    proc = run_cli("train", "--resume", str(run))
    assert proc.returncode == 2
    assert f"error: --resume: {run}: no checkpoint to resume from" in proc.stderr
    assert not (run / "metrics.jsonl").exists()


def test_resume_of_a_missing_directory_says_so_first(tmp_path: Path) -> None:
    proc = run_cli("train", "--resume", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --resume: {tmp_path / 'nope'}: no such run directory"


@pytest.mark.e2e
def test_dry_run_reports_what_validate_format_flags(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(domain_data, data)
    valid = (data / "valid.jsonl").read_text().splitlines()
    (data / "valid.jsonl").write_text("\n".join(valid[:2]) + "\n")
    cfg = _config(tmp_path, tiny_model, data, max_seq_length=24)
    proc = run_cli("train", "-c", str(cfg), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "no problems found" not in proc.stdout
    assert "train.batch_size: 4 > the 2 rows of valid.jsonl" in proc.stderr
    assert "warning: train.max_seq_length: " in proc.stderr
    assert f"longer than 24 tokens are truncated ({data}/train.jsonl:1" in proc.stderr
    plan = json.loads(
        run_cli("train", "-c", str(cfg), "--dry-run", "--json").stdout.splitlines()[-1]
    )
    assert len(plan["warnings"]) == 2 and plan["truncated"] > 0


def test_hostfile_needs_launch(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text("[]")
    proc = run_cli("train", "--hostfile", str(hostfile), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --hostfile: only with --launch N (the ranks it starts)"


@pytest.mark.e2e
def test_train_sets_the_blas_threads_it_is_given(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    """train.blas_threads reaches OpenBLAS before the first step; 0 keeps the user's
    OPENBLAS_NUM_THREADS, else gives the tiny model (256 wide) one thread. Several CPU streams
    widen MLX's eval order (`runtime.EVAL_WIDTH_ENV`) unless the user set it; one leaves it."""
    import os
    import subprocess
    import sys

    cfg = _config(tmp_path, tiny_model, domain_data, iters=2)
    probe = (
        "import sys; from mlxtune.config import load_config; from mlxtune.train import train; "
        "from mlxtune.runtime import blas_threads; "
        f"train(load_config({str(cfg)!r}, sys.argv[1:]), dry_run=True); print(blas_threads()); "
        "import os; from mlxtune.runtime import user_environ; "
        "print(os.environ.get('MLX_BFS_MAX_WIDTH'), user_environ().get('MLX_BFS_MAX_WIDTH'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")]
    )

    def probed(*sets: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", probe, *sets],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return out.stdout.strip().splitlines()[-2:]

    def threads(*sets: str) -> str:
        return probed(*sets)[0]

    # (this process's, then what its children get: the user's environment)
    assert probed("train.cpu_streams=2")[1] == "100000 None"
    assert probed("train.cpu_streams=1")[1] == "None None"
    env["MLX_BFS_MAX_WIDTH"] = "30"
    assert probed("train.cpu_streams=2")[1] == "30 30"  # the user's
    del env["MLX_BFS_MAX_WIDTH"]

    if threads("train.blas_threads=1") == "None":
        pytest.skip("no OpenBLAS on this machine")
    assert threads("train.blas_threads=1") == "1"
    assert threads("train.blas_threads=3") == "3"
    assert threads() == "1"  # narrow: one thread, whatever the CPU count
    env["OPENBLAS_NUM_THREADS"] = "2"  # 0 (the default) leaves OpenBLAS as the user set it
    assert threads() == "2"


def test_train_blas_threads_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting wins, then the user's OPENBLAS_NUM_THREADS; a narrow model gets one thread,
    a wide or unknown one OpenBLAS's default (None: left alone)."""
    from mlxtune.runtime import NARROW_MODEL_WIDTH, train_blas_threads

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert train_blas_threads(4, 256) == (4, "train.blas_threads")
    assert train_blas_threads(0, 256)[0] == 1
    assert train_blas_threads(0, NARROW_MODEL_WIDTH - 1)[0] == 1
    assert train_blas_threads(0, NARROW_MODEL_WIDTH) == (None, "OpenBLAS's default")
    assert train_blas_threads(0, None) == (None, "OpenBLAS's default")
    assert train_blas_threads(0, NARROW_MODEL_WIDTH, streams=2)[0] == 1  # a core per stream
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert train_blas_threads(0, 256) == (None, "OPENBLAS_NUM_THREADS")
    assert train_blas_threads(3, 256) == (3, "train.blas_threads")
    assert train_blas_threads(0, 256, streams=2) == (None, "OPENBLAS_NUM_THREADS")


def test_train_cpu_streams_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """One stream on a GPU or with several ranks; else the setting, else one per usable CPU;
    never more than the batch has rows."""
    import mlxtune.runtime as runtime

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    assert runtime.train_cpu_streams(0, 4, 1, on_cpu=True)[0] == 4
    assert runtime.train_cpu_streams(0, 8, 1, on_cpu=True)[0] == 8
    assert runtime.train_cpu_streams(3, 8, 1, on_cpu=True) == (3, "train.cpu_streams")
    assert runtime.train_cpu_streams(6, 4, 1, on_cpu=True)[0] == 4
    assert runtime.train_cpu_streams(0, 4, 1, on_cpu=False)[0] == 1
    assert runtime.train_cpu_streams(0, 4, 2, on_cpu=True)[0] == 1
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 2)
    assert runtime.train_cpu_streams(0, 4, 1, on_cpu=True)[0] == 2
    assert runtime.train_cpu_streams(0, 1, 1, on_cpu=True)[0] == 1


def test_row_slices_cover_every_row_once() -> None:
    from mlxtune.train.data import Batches, Example, row_slices

    for rows in range(1, 9):
        for parts in range(1, 6):
            slices = row_slices(rows, parts)
            covered = [i for s in slices for i in range(rows)[s]]
            assert covered == list(range(rows)) and len(slices) == min(rows, parts)
            sizes = [s.stop - s.start for s in slices]
            assert max(sizes) - min(sizes) <= 1
    # a split batch's position count is the most any one part trains, per width
    examples = [Example([1] * 9, [False] + [True] * n + [False] * (8 - n)) for n in (8, 1, 1, 6)]
    batches = Batches(examples, 4, seed=0)
    assert batches.trained_by_width() == {8: 16}
    assert batches.trained_by_width(2) == {8: 9}


def test_model_width_reads_text_and_vision_models(tiny_model: Path) -> None:
    from mlx_lm import load

    from mlxtune.train.plan import model_width

    model, _ = load(str(tiny_model))
    assert model_width(model) == 256

    class Vision:  # mlx-vlm's layout: the text model under language_model
        language_model = model

    assert model_width(Vision()) == 256
    assert model_width(object()) is None
