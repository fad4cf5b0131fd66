"""mlxtune train: masking, batching, run directory, exact resume after SIGKILL, 2 ranks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cli_env, run_cli
from mlxtune.train.data import Batches, Example, collate, pack
from mlxtune.train.events import (
    CheckpointReached,
    EarlyStopped,
    FinalMetrics,
    LoopState,
    StepReport,
    TrainDone,
    TrainingCallback,
    TrainInterrupted,
    TrainStarted,
    ValidationReport,
)


def _config(tmp: Path, model: Path, data: Path, **train: object) -> Path:
    cfg = {
        "model": {"path": str(model)},
        "data": {"dir": str(data)},
        "train": {
            "method": "lora",
            "runs_dir": str(tmp / "runs"),
            "name": "t",
            "iters": 12,
            "batch_size": 4,
            "learning_rate": 2e-4,
            "lr_schedule": "cosine",
            "warmup_steps": 2,
            "lora_rank": 4,
            "num_layers": -1,
            "lora_dropout": 0.1,  # exercises the RNG state across resume
            "cpu_streams": 2,  # batches split over two CPU streams, whatever the machine's cores
            "max_seq_length": 128,
            "steps_per_report": 2,
            "steps_per_eval": 4,
            "save_every": 4,
            "val_batches": 2,
            **train,
        },
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_three_turn_chat_mask_reaches_the_loss(tiny_model: Path) -> None:
    """Every assistant turn is trained, system/user turns are not, in the collated batch."""
    from mlx_lm import load

    from mlxtune.formats import encode_for_training, resolve_template
    from mlxtune.train.data import tokenize

    _, tok = load(str(tiny_model))
    resolve_template(tok)
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Port of the API?"},
            {"role": "assistant", "content": "8080"},
            {"role": "user", "content": "And the gateway?"},
            {"role": "assistant", "content": "8082"},
            {"role": "user", "content": "Metrics?"},
            {"role": "assistant", "content": "8083"},
        ]
    }
    examples, truncated = tokenize([record], tok, mask_prompt=True, max_seq_length=512)
    assert truncated == []
    tokens, _ = encode_for_training(tok, record)
    assert examples[0].tokens == tokens
    _, targets, loss_mask, _ = collate(examples)
    trained = [int(t) for t, m in zip(targets[0], loss_mask[0], strict=True) if m]
    text = tok.decode(trained)
    for answer in ("8080", "8082", "8083"):
        assert answer in text
    for prompt in ("Be brief", "Port of the API", "gateway", "Metrics"):
        assert prompt not in text


def test_batch_order_is_a_function_of_seed_and_step() -> None:
    examples = [Example(list(range(n + 2)), [True] * (n + 2)) for n in range(20)]
    a = Batches(examples, 4, seed=3)
    b = Batches(examples, 4, seed=3)
    seq_a = [a.indices(s) for s in range(12)]
    assert [b.indices(s) for s in (7, 2, 11)] == [seq_a[7], seq_a[2], seq_a[11]]
    assert sorted(i for s in range(5) for i in a.indices(s)) == list(range(20))  # one epoch
    assert seq_a[:5] != seq_a[5:10]  # reshuffled per epoch
    # Ranks split each batch with no overlap.
    r0, r1 = Batches(examples, 4, seed=3, rank=0, world=2), Batches(examples, 4, seed=3, world=2)
    r1.rank = 1
    assert sorted(r0.indices(4) + r1.indices(4)) == sorted(seq_a[4])


def test_packing_fills_rows_and_never_trains_across_a_seam() -> None:
    examples = [Example([1, 2, 3, 4], [False, False, True, True]) for _ in range(6)]
    packed = pack(examples, max_seq_length=11)
    assert [len(p.tokens) for p in packed] == [12, 12]
    for p in packed:
        for seam in (4, 8):
            assert p.mask[seam] is False
    inputs, _, _, real = collate(packed)
    assert inputs.shape[1] % 8 == 0 and real == 22


@pytest.mark.e2e
def test_bad_config_exits_2_and_writes_nothing(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, tiny_model, domain_data, batch_size=1000, num_layers=99)
    proc = run_cli("train", "-c", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "train.batch_size" in proc.stderr and "train.num_layers" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_dry_run_plans_without_writing(tiny_model: Path, domain_data: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model, domain_data)
    proc = run_cli("train", "-c", str(cfg), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.splitlines()[-1])
    assert plan["event"] == "plan" and plan["steps"] == 12 and not plan["problems"]
    assert 0 < plan["trainable_params"] < plan["total_params"]
    assert plan["tokens_per_epoch"] > plan["trained_tokens_per_epoch"] > 0
    assert plan["est_time_s"] > 0 and plan["est_peak_memory_gb"] > 0
    assert not (tmp_path / "runs").exists()


def _final_weights(run: Path) -> dict[str, object]:
    import mlx.core as mx
    import numpy as np

    return {k: np.array(v) for k, v in mx.load(str(run / "adapters.safetensors")).items()}


@pytest.mark.e2e
def test_sigkill_then_resume_matches_uninterrupted_run(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    import numpy as np

    straight = tmp_path / "straight"
    straight.mkdir()
    cfg = _config(straight, tiny_model, domain_data)
    proc = run_cli("train", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert {"train", "val", "save", "done"} <= {e["event"] for e in events}
    train_ev = next(e for e in events if e["event"] == "train")
    for key in ("step", "train_loss", "lr", "it_per_s", "tokens_per_s", "peak_memory_gb"):
        assert key in train_ev
    done = events[-1]
    run = straight / "runs" / "t"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["final"]["steps"] == 12
    assert (run / "best" / "adapters.safetensors").is_file()
    adapter_cfg = json.loads((run / "adapter_config.json").read_text())
    assert adapter_cfg["fine_tune_type"] == "lora" and adapter_cfg["lora_parameters"]["rank"] == 4

    # Kill the same run once its step-4 checkpoint is on disk, mid-way to step 8.
    killed = tmp_path / "killed"
    killed.mkdir()
    cfg2 = _config(killed, tiny_model, domain_data)
    run2 = killed / "runs" / "t"
    child = subprocess.Popen(
        [sys.executable, "-m", "mlxtune", "train", "-c", str(cfg2), "--json"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if json.loads(line).get("event") == "train" and json.loads(line)["step"] >= 6:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (run2 / "checkpoints" / "step_0000004" / "state.json").is_file()
    assert not (run2 / "checkpoints" / "step_0000008").exists()
    assert json.loads((run2 / "run.json").read_text())["status"] == "running"

    proc = run_cli("train", "--resume", str(run2), "--json")
    assert proc.returncode == 0, proc.stderr
    resumed = [json.loads(x) for x in proc.stdout.splitlines()]
    assert resumed[-1]["steps"] == 12
    assert resumed[-1]["train_loss"] == pytest.approx(done["train_loss"], rel=1e-4)
    assert resumed[-1]["val_loss"] == pytest.approx(done["val_loss"], rel=1e-4)
    a, b = _final_weights(run), _final_weights(run2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(6) == 1  # no duplicate lines after resume


@pytest.mark.e2e
def test_two_ranks_under_mlx_launch(tiny_model: Path, domain_data: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model, domain_data, iters=4, save_every=2, steps_per_eval=2)
    proc = run_cli("train", "-c", str(cfg), "--launch", "2", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads((tmp_path / "runs" / "t" / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "completed"
    # only rank 0 renders: one start line, one closing line
    assert proc.stdout.count("training lora ->") == 1, proc.stdout
    assert proc.stdout.count("completed ") == 1, proc.stdout

    # Config problems are found once, before any rank starts (batch 3 is not divisible by 2)
    bad = _config(tmp_path, tiny_model, domain_data, batch_size=3, name="bad")
    proc = run_cli("train", "-c", str(bad), "--launch", "2", timeout=240)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: train.batch_size: 3 is not divisible by the world size 2"
    )
    # A rank that fails must fail the launch, though mlx.launch itself exits 0. Both ranks
    # fail the same check; whichever fails first, mlx.launch stops the other, which may then
    # not report (a crash, as far as the launcher knows) - so any rank may be the one named.
    bad = _config(tmp_path, tiny_model, domain_data, num_layers=99, name="bad")
    proc = run_cli("train", "-c", str(bad), "--launch", "2", timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"rank [01]: failed: train\.num_layers", proc.stderr), proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_run_dir_is_an_mlx_lm_adapter(
    method: str, tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    """`mlx_lm.generate --adapter-path runs/NAME` and `mlx_lm.fuse` take the run as it is."""
    from mlxtune.runtime import subprocess_env

    cfg = _config(tmp_path, tiny_model, domain_data, method=method, iters=4, save_every=4)
    assert run_cli("train", "-c", str(cfg)).returncode == 0
    run = tmp_path / "runs" / "t"
    env = subprocess_env(cli_env())
    gen = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(tiny_model),
         "--adapter-path", str(run), "--prompt", "Which port?", "--max-tokens", "4"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    fused = tmp_path / "fused"
    fuse = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "fuse", "--model", str(tiny_model),
         "--adapter-path", str(run), "--save-path", str(fused)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert fuse.returncode == 0, fuse.stderr
    assert (fused / "config.json").is_file()


@pytest.mark.e2e
def test_early_stopping_keeps_the_best(tiny_model: Path, domain_data: Path, tmp_path: Path) -> None:
    # min_delta larger than any possible gain: the second evaluation cannot count as progress,
    # so a patience of 1 stops there; best/ still follows the lowest validation loss.
    cfg = _config(
        tmp_path, tiny_model, domain_data, iters=40, steps_per_eval=4, save_every=100,
        early_stopping_patience=1, early_stopping_min_delta=100.0,
    )  # fmt: skip
    proc = run_cli("train", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    stop = next(e for e in events if e["event"] == "early_stop")
    vals = {e["step"]: e["val_loss"] for e in events if e["event"] == "val"}
    assert stop["step"] == 8 and stop["best_step"] == min(vals, key=vals.__getitem__)
    final = json.loads((tmp_path / "runs" / "t" / "run.json").read_text())["final"]
    assert final["stopped_early"] is True and final["steps"] == 8
    assert (tmp_path / "runs" / "t" / "best" / "adapters.safetensors").is_file()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "knobs",
    [
        {"quantize_bits": 4},  # QLoRA: LoRA over a base quantized at load
        {"grad_checkpoint": True, "grad_accumulation_steps": 2},
        {"packing": True, "method": "full"},
    ],
    ids=["qlora", "checkpoint+accum", "packing+full"],
)
def test_training_knobs_run_and_reduce_loss(
    knobs: dict[str, object], tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, tiny_model, domain_data, iters=8, steps_per_eval=100, **knobs)
    proc = run_cli("train", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    losses = [json.loads(x)["train_loss"] for x in proc.stdout.splitlines() if '"train"' in x]
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# The pieces: events, RunWriter, the --json wire shape


class _Recorder(TrainingCallback):
    """Keeps every event, and whether each checkpoint was on disk when this subscriber heard it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        self.saved_before_heard: list[bool] = []

    def on_train_started(self, event: TrainStarted) -> None:
        self.seen.append(("started", event))

    def on_step_report(self, event: StepReport) -> None:
        self.seen.append(("report", event))

    def on_validation(self, event: ValidationReport) -> None:
        self.seen.append(("val", event))

    def on_checkpoint(self, event: CheckpointReached) -> None:
        self.seen.append(("save", event))
        self.saved_before_heard.append((event.path / "state.json").is_file())

    def on_early_stop(self, event: EarlyStopped) -> None:
        self.seen.append(("early_stop", event))

    def on_train_done(self, event: TrainDone) -> None:
        self.seen.append(("done", event))


@pytest.mark.e2e
def test_a_short_run_emits_its_events_in_order(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    from dataclasses import asdict

    from mlxtune.config import load_config
    from mlxtune.train import train

    cfg_path = _config(tmp_path, tiny_model, domain_data, iters=4, save_every=2, steps_per_eval=2)
    rec = _Recorder()
    result = train(load_config(cfg_path), callback=rec)
    kinds = [(k, getattr(e, "step", None)) for k, e in rec.seen]
    assert kinds == [
        ("started", None),
        ("report", 2), ("val", 2), ("save", 2),
        ("report", 4), ("val", 4), ("save", 4),
        ("done", None),
    ]  # fmt: skip
    assert rec.saved_before_heard == [True, True]  # RunWriter hears each event first
    done = rec.seen[-1][1]
    assert isinstance(done, TrainDone)
    assert result.status == "completed" and result.final == asdict(done.final)
    assert result.final["steps"] == 4 and result.final["best_step"] in (2, 4)
    run_json = json.loads((tmp_path / "runs" / "t" / "run.json").read_text())
    assert run_json["final"] == result.final


def test_run_writer_keeps_the_run_directory(tmp_path: Path) -> None:
    """Driven by hand-made events over a one-layer model: what each event leaves on disk."""
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlxtune.config import load_config
    from mlxtune.rundir import RunDir, read_metrics
    from mlxtune.train import RunWriter, TrainPlan
    from mlxtune.train.writer import latest_checkpoint, load_checkpoint

    cfg = load_config(flags={"data.dir": str(tmp_path / "data"), "model.path": "m"})
    model = nn.Linear(2, 2)
    optimizer = optim.Adam(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    run = RunDir(tmp_path / "run")
    writer = RunWriter(run, cfg, model, optimizer, "{{ template }}")
    plan = TrainPlan("lora", 1, 6, 6, 8, 2, 0, 2, 100, 50, 4, 2.0)

    def report(step: int) -> StepReport:
        return StepReport(step, 4, 1.0, 1e-3, 2.0, 100.0 * step, 50.0, 10 * step, 0.1)

    writer.on_train_started(TrainStarted(run.root, 0, plan))
    assert run.read_run()["status"] == "running" and run.read_run()["resumed_from_step"] is None
    assert run.chat_template.read_text() == "{{ template }}" and run.config.is_file()
    writer.on_step_report(report(2))
    writer.on_validation(ValidationReport(2, 0.9, 0.9, 2))  # improved: best/ written
    assert (run.best / "adapters.safetensors").is_file()
    best_written = (run.best / "adapters.safetensors").stat().st_mtime_ns
    state = LoopState(step=2, best_val=0.9, best_step=2, trained_tokens=20, wall_s=1.5)
    writer.on_checkpoint(CheckpointReached(2, run.checkpoints / "step_0000002", state))
    writer.on_step_report(report(4))
    writer.on_validation(ValidationReport(4, 1.2, 0.9, 2))  # not improved: best/ untouched
    assert (run.best / "adapters.safetensors").stat().st_mtime_ns == best_written
    assert [r["step"] for r in read_metrics(run.metrics)] == [2, 2, 4, 4]
    assert writer.mean_tokens_per_s() == pytest.approx(300.0)

    # A checkpoint restores exactly what it saved.
    ckpt = latest_checkpoint(run)
    assert ckpt == run.checkpoints / "step_0000002"
    assert load_checkpoint(ckpt, nn.Linear(2, 2), optimizer) == state

    writer.on_interrupted(TrainInterrupted(4))
    assert run.read_run()["status"] == "stopped"

    # Resuming from step 2 drops the metric lines written after it and keeps started_at.
    started_at = run.read_run()["started_at"]
    resumed = RunWriter(run, cfg, model, optimizer, "{{ template }}")
    resumed.on_train_started(TrainStarted(run.root, 2, plan))
    assert [r["step"] for r in read_metrics(run.metrics)] == [2, 2]
    assert run.read_run()["resumed_from_step"] == 2
    assert run.read_run()["started_at"] == started_at
    final = FinalMetrics(4, 1.0, 1.2, 0.9, 2, False, 40, 200.0, 3.0, 0.1)
    resumed.on_train_done(TrainDone(run.root, "completed", final))
    info = run.read_run()
    assert info["status"] == "completed" and info["final"]["best_step"] == 2
    assert run.is_adapter()


def test_json_lines_keep_their_keys() -> None:
    """`train --json` is a wire format (bench.parse_train_json, scripts): the keys per event."""
    from mlxtune.bench import parse_train_json
    from mlxtune.render.train import event_json

    step = StepReport(2, 4, 1.5, 1e-3, 2.0, 300.0, 120.0, 240, 0.5)
    lines = [
        event_json(step),
        event_json(ValidationReport(2, 1.4, 1.4, 2)),
        event_json(CheckpointReached(2, Path("runs/t/checkpoints/step_0000002"), LoopState(2))),
        event_json(EarlyStopped(8, 4)),
        event_json(TrainDone(Path("runs/t"), "completed", FinalMetrics(
            8, 1.5, 1.4, 1.4, 4, True, 960, 300.0, 3.2, 0.5,
        ))),
    ]  # fmt: skip
    assert [list(line) for line in lines] == [
        ["event", "step", "total_steps", "train_loss", "lr", "it_per_s", "tokens_per_s",
         "trained_tokens_per_s", "trained_tokens", "peak_memory_gb"],
        ["event", "step", "val_loss", "best_val_loss", "best_step"],
        ["event", "step", "path"],
        ["event", "step", "best_step"],
        ["event", "run_dir", "status", "steps", "train_loss", "val_loss", "best_val_loss",
         "best_step", "stopped_early", "trained_tokens", "tokens_per_s", "wall_s",
         "peak_memory_gb"],
    ]  # fmt: skip
    assert lines[2]["path"] == "runs/t/checkpoints/step_0000002"
    reports = parse_train_json([json.dumps(line) for line in lines])
    assert reports == [{"step": 2, "it_per_s": 2.0, "tokens_per_s": 120.0, "peak_memory_gb": 0.5}]


def test_launch_args_are_stripped_from_the_rank_command() -> None:
    from mlxtune.train.launch import strip_launch_args

    args = ["-c", "x.yaml", "--launch", "2", "--backend=ring", "--hostfile", "h.json", "--json"]
    assert strip_launch_args(args) == ["-c", "x.yaml", "--json"]


@pytest.mark.e2e
def test_gpu_padding_feeds_no_more_shapes_than_mlx_lm(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    """On a GPU each distinct batch shape is another trace of the compiled step and, on a cold
    kernel cache, more kernels to compile. With the GPU padding, the shapes this loop feeds the
    model (training steps and every validation batch) are no more than mlx-lm's padding rule
    gives for the same batches. mlx-lm drops a short last validation batch; we validate it,
    filled to the batch size, so its width is counted on both sides."""
    import mlx.core as mx

    from mlxtune.config import load_config
    from mlxtune.train.data import GPU_PAD_TO
    from mlxtune.train.loop import LoopArgs, TrainStep, train_loop
    from mlxtune.train.plan import plan

    steps = 12
    cfg = load_config(
        _config(tmp_path, tiny_model, domain_data, iters=steps, steps_per_eval=6, val_batches=-1)
    )
    t, world = cfg.train, mx.distributed.init()
    planned = plan(cfg, world, resume=None, dry_run=False)
    examples, valid = planned.train_batches.examples, planned.valid_examples
    batches = Batches(examples, t.batch_size, seed=t.seed, pad_to=GPU_PAD_TO)  # CPU pads to 8
    seen: set[tuple[str, tuple[int, ...]]] = set()

    class Recording(TrainStep):
        kind = "train"

        def evaluate(self, *args: object, **kwargs: object) -> float:
            self.kind = "valid"
            try:
                return super().evaluate(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                self.kind = "train"

        def to_device(self, batch: tuple, split: bool = True) -> tuple:
            seen.add((self.kind, batch[0].shape))
            return super().to_device(batch, split)

    args = LoopArgs.from_config(t, steps, len(valid), None)
    train_loop(
        planned.model, planned.optimizer, batches, valid, args, world=world, step_type=Recording
    )

    def mlx_lm_width(rows: list[Example]) -> int:  # tuner.trainer.iterate_batches' padding
        longest = max(len(e.tokens) for e in rows)
        return min(1 + 32 * -(-longest // 32), t.max_seq_length) - 1

    visited = {tuple(batches.indices(m)) for m in range(steps)}
    order = sorted(range(len(valid)), key=lambda i: len(valid[i].tokens))
    starts = range(0, len(order), args.val_batch_size)
    bound = len({mlx_lm_width([examples[i] for i in g]) for g in visited}) + len(
        {mlx_lm_width([valid[i] for i in order[s : s + args.val_batch_size]]) for s in starts}
    )
    assert {kind for kind, _ in seen} == {"train", "valid"}
    assert len(seen) <= bound, (sorted(seen), bound)
    assert {shape[0] for _, shape in seen} == {t.batch_size}  # the short batch was filled
