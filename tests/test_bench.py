"""bench: the arithmetic (ratio, spread, percentiles, train intervals), the parsers of raw
mlx-lm output, and short real runs on the tiny model (generate in process, serve over loopback)."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest

from mlxtune import bench as B
from mlxtune.config import load_config
from mlxtune.errors import MlxtuneError


def test_summarize_and_ratio() -> None:
    assert B.summarize([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert B.summarize([1.0, 4.0])["median"] == 2.5  # type: ignore[index]
    assert B.summarize([]) is None
    # ratio of medians, so one outlier run does not move it
    assert B.ratio([10.0, 12.0, 100.0], [5.0, 6.0, 7.0]) == pytest.approx(2.0)
    assert B.ratio([1.0], []) is None
    assert B.ratio([1.0], [0.0]) is None


def test_percentile_interpolates_like_numpy() -> None:
    xs = [float(i) for i in range(1, 11)]
    assert B.percentile(xs, 50) == pytest.approx(5.5)
    assert B.percentile(xs, 95) == pytest.approx(9.55)
    assert B.percentile([7.0], 99) == 7.0
    assert B.percentile([], 50) is None


def test_train_schedule_aligns_reports_with_warmup() -> None:
    assert B.train_schedule(3, 20) == (23, 1)
    assert B.train_schedule(4, 20) == (24, 4)
    assert B.train_schedule(0, 20) == (20, 20)


def test_aggregate_train_drops_warmup_and_weights_by_time() -> None:
    reports = [
        {"step": 2, "it_per_s": 0.5, "tokens_per_s": 10.0, "peak_memory_gb": 1.0},  # warm-up
        {"step": 4, "it_per_s": 2.0, "tokens_per_s": 100.0, "peak_memory_gb": 1.5},  # 1 s
        {"step": 6, "it_per_s": 1.0, "tokens_per_s": 400.0, "peak_memory_gb": 1.2},  # 2 s
    ]
    out = B.aggregate_train(reports, warmup=2, every=2)
    assert out["it_per_s"] == pytest.approx(4 / 3)
    assert out["tokens_per_s"] == pytest.approx((100 + 800) / 3)
    assert out["timed_tokens"] == 900
    assert out["peak_memory_gb"] == 1.5
    with pytest.raises(MlxtuneError, match="after warm-up"):
        B.aggregate_train(reports[:1], warmup=2, every=2)


def test_parsers_read_mlx_lm_and_mlxtune_output() -> None:
    lines = [
        "Iter 10: Train loss 2.345, Learning Rate 1.000e-05, It/sec 1.234, "
        "Tokens/sec 456.7, Trained Tokens 4567, Peak mem 1.234 GB",
        'MLXTUNE_BENCH {"step": 20, "it_per_s": 2.0, "tokens_per_s": 9.0, "peak_memory_gb": 0.1}',
        "noise",
    ]
    got = B.parse_lora_output(lines, rows_per_step=0)
    assert got[0] == {"step": 10, "it_per_s": 1.234, "tokens_per_s": 456.7, "peak_memory_gb": 1.234}
    assert got[1]["step"] == 20
    # mlx-lm counts one padding target per row: 4 rows x 2 it/s come off its 9 tok/s
    assert B.parse_lora_output(lines, rows_per_step=4)[1]["tokens_per_s"] == pytest.approx(1.0)
    events = [
        '{"event": "val", "step": 1, "val_loss": 3.0}',
        '{"event": "train", "step": 5, "train_loss": 2.0, "lr": 1e-5, "it_per_s": 3.0,'
        ' "tokens_per_s": 30.0, "peak_memory_gb": 0.2}',
        '{"event": "done"}',
    ]
    assert B.parse_train_json(events) == [
        {"step": 5, "it_per_s": 3.0, "tokens_per_s": 30.0, "peak_memory_gb": 0.2}
    ]
    bench_out = ["Averages: prompt_tps=100.500, generation_tps=20.250, peak_memory=0.017"]
    assert B.parse_mlx_benchmark(bench_out) == {
        "prompt_tps": 100.5,
        "generation_tps": 20.25,
        "peak_memory_gb": 0.017,
    }
    with pytest.raises(MlxtuneError, match="Averages"):
        B.parse_mlx_benchmark(["Traceback"])


def test_recorder_keeps_sides_apart_and_result_serialises() -> None:
    rec = B.Recorder()
    rec.add("generate", "p=8 b=1", "mlxtune", {"prompt_tps": 10.0, "ttft_ms": None})
    rec.add("generate", "p=8 b=1", "mlx-lm", {"prompt_tps": 5.0})
    rec.add("generate", "p=8 b=1", "mlxtune", {"prompt_tps": 30.0})
    (fig,) = rec.figures.values()
    assert fig.mlxtune == [10.0, 30.0] and fig.baseline == [5.0]
    assert fig.ratio == pytest.approx(4.0)
    d = fig.to_dict()
    assert d["mlxtune"]["median"] == 20.0 and d["unit"] == "tok/s" and d["higher_is_better"]


def test_bad_arguments_are_one_line_errors() -> None:
    cfg = load_config(None, ["model.path=/nonexistent"])
    with pytest.raises(MlxtuneError, match="--what"):
        B.bench(cfg, what="everything")
    with pytest.raises(MlxtuneError, match="--baseline"):
        B.bench(cfg, baseline="vllm")


def test_run_child_bounds_time_and_reads_rss() -> None:
    run = B.run_child([sys.executable, "-c", "print('hi')"], timeout=30)
    assert run.returncode == 0 and run.lines == ["hi"] and not run.timed_out
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    busy = B.run_child([sys.executable, "-c", spin], timeout=30)
    assert busy.cpu_s is not None and 0.3 <= busy.cpu_s < busy.wall_s + 0.5  # the child's CPU
    slow = B.run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert slow.timed_out and slow.wall_s < 10


@pytest.mark.e2e
def test_generate_bench_on_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model}",
            "bench.prompt_lengths=[16]",
            "bench.batch_sizes=[1,2]",
            "bench.gen_tokens=8",
            "bench.trials=1",
        ],
    )
    seen: list[str] = []
    result = B.bench(cfg, what="generate", baseline="none", repeat=2, progress=seen.append)
    assert seen == [f"generate p=16 b={b} [mlxtune] repeat {r}/2" for r in (1, 2) for b in (1, 2)]
    assert result.what == ["generate"] and result.repeat == 2
    for case in ("p=16 b=1", "p=16 b=2"):
        for metric in ("prompt_tps", "generation_tps", "ttft_ms", "peak_memory_gb", "max_rss_mb"):
            fig = result.figure("generate", case, metric)
            assert fig is not None, (case, metric)
            assert len(fig.mlxtune) == 2 and all(v > 0 for v in fig.mlxtune)
            assert fig.baseline == [] and fig.ratio is None
    measured = result.figure("generate", "p=16 b=1", "ttft_measured_ms")
    assert measured is not None and len(measured.mlxtune) == 2
    assert all(v > 0 for v in measured.mlxtune)
    d = json.loads(json.dumps(result.to_dict()))  # JSON-clean
    assert d["schema_version"] == 1
    assert {"date", "versions", "device", "blas", "git_commit", "cpu_count"} <= set(
        d["environment"]
    )
    assert d["environment"]["versions"]["mlx_lm"] == importlib.metadata.version("mlx-lm")
    fig = d["figures"][0]
    assert {"section", "case", "metric", "unit", "mlxtune", "baseline", "ratio"} <= set(fig)
    assert {"values", "min", "median", "max"} <= set(fig["mlxtune"])


@pytest.mark.e2e
def test_make_prompts_exact_length(tiny_model: Path) -> None:
    from mlxtune.modeling import load_model

    cfg = load_config(None, [f"model.path={tiny_model}"])
    _, tokenizer, _ = load_model(cfg.model)
    prompts = B.make_prompts(tokenizer, 40, 3)
    assert [len(p) for p in prompts] == [40, 40, 40]
    assert len({tuple(p) for p in prompts}) == 3


@pytest.mark.e2e
def test_serve_driver_against_loopback_mlx_lm_server(tiny_model: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [f"model.path={tiny_model}"])
    cmd = lambda port: B.server_command(cfg, "mlx-lm", port, tmp_path)  # noqa: E731
    with B.running_server(cmd, tmp_path / "server.log", ready_timeout=60) as server:
        assert server.url.startswith("http://127.0.0.1:")
        prompts = B.serve_prompts(4)
        results = [
            B.run_load(
                server.url, None, prompts, concurrency=c, requests=2, max_tokens=6, time_limit_s=60
            )
            for c in (1, 2)
        ]
        whole = B.run_load(
            server.url, None, prompts, concurrency=2, requests=3, max_tokens=6, time_limit_s=60,
            stream=False,
        )  # fmt: skip
        health = B.health_ms(server.url, None, probes=3)
        proc = server.proc
        assert proc is not None
    assert proc.poll() is not None, "server left running"
    assert server.max_rss_mb and server.max_rss_mb > 10
    for res in results:
        assert res.ok == 2 and res.errors == 0 and res.n503 == 0, res.error_samples
        assert res.completion_tokens > 0 and res.completion_tps > 0
        figs = res.figures()
        assert figs["latency_p50_ms"] and figs["latency_p99_ms"] >= figs["latency_p50_ms"]  # type: ignore[operator]
        assert figs["ttft_p50_ms"] and figs["ttft_p50_ms"] <= figs["latency_p99_ms"]  # type: ignore[operator]
        assert figs["events_per_answer"] and figs["events_per_answer"] >= 3  # role, text, finish
    # whole answers: the same texts as streamed, tokens from `usage`, no first token to time
    assert whole.ok == 3 and whole.timed_out == 0 and whole.success_pct == 100
    assert whole.texts[0] == results[0].texts[0] and whole.completion_tokens > 0
    assert whole.ttfts_s == [] and whole.requests_per_s > 0
    assert health is not None and health > 0


@pytest.mark.e2e
def test_serve_driver_counts_refused_connections_as_errors() -> None:
    port = B.free_port()  # nothing listens there
    res = B.run_load(
        f"http://127.0.0.1:{port}",
        None,
        B.serve_prompts(2),
        concurrency=2,
        requests=3,
        max_tokens=4,
        time_limit_s=10,
    )
    assert res.ok == 0 and res.errors == 3 and res.error_samples
    assert all(s.startswith("ConnectError") for s in res.error_samples), res.error_samples


@pytest.mark.e2e
def test_bench_cli_writes_json(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "--what",
        "generate",
        "--baseline",
        "mlx-lm",
        "--json",
        str(out),
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "bench.prompt_lengths=[16]",
        "--set",
        "bench.batch_sizes=[1]",
        "--set",
        "bench.gen_tokens=8",
        "--set",
        "bench.trials=2",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ratio" in proc.stdout and "generation_tps" in proc.stdout
    data = json.loads(out.read_text())
    fig = next(f for f in data["figures"] if f["metric"] == "generation_tps")
    assert fig["baseline"]["values"] and fig["ratio"] > 0


@pytest.mark.e2e
def test_train_bench_runs_both_sides_on_the_same_steps(
    tiny_model: Path, domain_data: Path, tmp_path: Path
) -> None:
    # 8 rows in batches of 2: the timed steps 5-8 are the second epoch whole on both sides
    # (different batches, the same rows), so both must count the same trained tokens.
    data = tmp_path / "data"
    data.mkdir()
    rows = (domain_data / "train.jsonl").read_text().splitlines()[:8]
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    shutil.copy(domain_data / "valid.jsonl", data / "valid.jsonl")
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model}",
            f"data.dir={data}",
            "train.max_seq_length=128",
            "train.batch_size=2",
            "bench.warmup_steps=4",
            "bench.train_steps=4",
        ],
    )
    result = B.bench(cfg, what="train", baseline="mlx-lm", repeat=1)
    for metric in ("it_per_s", "tokens_per_s", "peak_memory_gb", "max_rss_mb", "wall_s", "cpu_s"):
        fig = result.figure("train", "lora", metric)
        assert fig is not None and fig.baseline and fig.baseline[0] > 0, metric
        assert len(fig.mlxtune) == 1 and fig.mlxtune[0] > 0 and fig.ratio > 0, metric
    tokens = result.figure("train", "lora", "timed_tokens")
    assert tokens is not None and tokens.mlxtune[0] > 0
    assert tokens.mlxtune[0] == pytest.approx(tokens.baseline[0], abs=1)


def test_train_bench_without_data_is_one_line_error(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.dir={tmp_path}", "model.path=/nonexistent"])
    with pytest.raises(MlxtuneError, match=r"train\.jsonl not found"):
        B.bench_train_once(cfg, "mlx-lm", tmp_path)


def test_bench_to_md_renders_ratio_and_environment(repo_root: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_to_md", repo_root / "scripts/bench_to_md.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = B.Recorder()
    rec.add("serve", "c=4", "mlxtune", {"completion_tps": 300.0})
    rec.add("serve", "c=4", "mlx-lm", {"completion_tps": 200.0})
    rec.add("serve", "c=4", "mlxtune", {"completion_tps": 320.0})
    env = {
        "date": "2026-01-01T00:00:00+00:00",
        "git_commit": "abc",
        "cpu": "CPU",
        "cpu_count": 2,
        "machine": "Linux",
        "device": "cpu",
        "versions": {"mlxtune": "0", "mlx": "1", "mlx_lm": "2", "python": "3"},
        "blas": "OpenBLAS",
        "loadavg_start": [1.0, 0, 0],
        "loadavg_end": [2.0, 0, 0],
    }
    result = B.BenchResult(["serve"], "mlx-lm", 2, list(rec.figures.values()), env, {"model": "m"})
    md = mod.render(json.loads(json.dumps(result.to_dict())), "x.json")
    assert "| serve | c=4 | completion_tps (tok/s) | 310 (300–320) | 200 | 1.55x |" in md
    # repeats pair up (the sides interleave): the ratio's spread is over per-repeat ratios
    rec.add("serve", "c=4", "mlx-lm", {"completion_tps": 100.0})
    rec.set_seed("serve", "c=4", "completion_tps", 2.12)
    rec.set_seed("serve", "c=99", "completion_tps", 1.0)  # not measured: nothing to put it by
    assert len(rec.figures) == 1
    result = B.BenchResult(["serve"], "mlx-lm", 2, list(rec.figures.values()), env, {"model": "m"})
    md = mod.render(json.loads(json.dumps(result.to_dict())), "x.json")
    assert "| 310 (300–320) | 150 (100–200) | 2.07x (1.50–3.20) | 2.12 |" in md
    assert "mlx-lm 2" in md and "load average at start / end: 1.00 / 2.00" in md


def test_cli_rejects_unknown_what_in_one_line() -> None:
    from typer.testing import CliRunner

    from mlxtune.cli import app

    res = CliRunner().invoke(app, ["bench", "--what", "everything"])
    assert res.exit_code == 2
    assert "--what: " in res.stderr and "Traceback" not in res.output  # blamed on the flag


def test_train_commands_match_on_both_sides(tmp_path: Path) -> None:
    import yaml

    from mlxtune.config import load_config as load

    cfg = load(
        None,
        [
            "model.path=some/model",
            "data.dir=d",
            "train.batch_size=3",
            "train.learning_rate=0.001",
            "train.lora_rank=4",
            "train.lora_alpha=8",
            "train.max_seq_length=99",
            "train.packing=true",
            "bench.warmup_steps=2",
            "bench.train_steps=4",
        ],
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = B.train_command(cfg, "mlx-lm", tmp_path / "a")
    lora = yaml.safe_load((tmp_path / "a" / "lora.yaml").read_text())
    assert base[-2:] == ["-c", str(tmp_path / "a" / "lora.yaml")]
    assert (lora["iters"], lora["steps_per_report"], lora["batch_size"]) == (6, 2, 3)
    assert lora["lora_parameters"] == {"rank": 4, "scale": 2.0, "dropout": 0.0}
    assert (lora["max_seq_length"], lora["mask_prompt"], lora["learning_rate"]) == (99, True, 1e-3)

    ours = B.train_command(cfg, "mlxtune", tmp_path / "b")
    assert ours[1:4] == ["-m", "mlxtune", "train"] and "--json" in ours
    sets = dict(v.split("=", 1) for k, v in itertools.pairwise(ours) if k == "--set")
    assert sets["train.iters"] == "6" and sets["train.steps_per_report"] == "2"
    assert sets["train.packing"] == "false"
    written = load(tmp_path / "b" / "config.yaml", [f"{k}={v}" for k, v in sets.items()])
    assert written.train.batch_size == 3 and written.train.iters == 6 and not written.train.packing


def test_server_commands(tmp_path: Path) -> None:
    adapter = tmp_path / "ad"
    cfg = load_config(None, ["model.path=m", f"serve.adapters={{tuned: {adapter}}}"])
    base = B.server_command(cfg, "mlx-lm", 4321, tmp_path)
    assert base[1:4] == ["-m", "mlx_lm", "server"]
    assert base[base.index("--adapter-path") + 1] == str(adapter)
    assert base[base.index("--host") + 1] == "127.0.0.1" and "4321" in base
    ours = B.server_command(cfg, "mlxtune", 4321, tmp_path)
    assert ours[1:4] == ["-m", "mlxtune", "serve"] and ours[-2:] == ["--port", "4321"]
    assert B.serve_adapter(cfg) == ("tuned", adapter)
    assert B.serve_adapter(load_config(None, [])) == ("base", None)


def test_serve_phases_cover_both_modes_and_the_seed_levels() -> None:
    cfg = load_config(None, ["bench.concurrency=[1,16]", "bench.requests_per_client=3"])
    phases = B.serve_phases(cfg)
    assert phases == [
        ("stream c=1", 1, 3, True),
        ("stream c=16", 16, 48, True),
        ("non-stream c=1", 1, 3, False),
        ("non-stream c=16", 16, 48, False),
    ]
    seeded = B.serve_phases(load_config(None, ["bench.seed_levels=true"]))
    assert [p[0] for p in seeded[-5:]] == [
        "seed c=1", "seed c=5", "seed c=10", "seed c=20", "seed sustained",
    ]  # fmt: skip
    assert seeded[-1][2] == 100 and not any(p[3] for p in seeded[-5:])


@pytest.mark.e2e
def test_bench_serves_an_adapter_when_none_is_configured(tiny_model: Path, tmp_path: Path) -> None:
    import yaml

    from mlxtune.bench.procs import child_config_yaml

    cfg = load_config(None, [f"model.path={tiny_model}"])
    served = B.with_bench_adapter(cfg, tmp_path)
    name, adapter = B.serve_adapter(served)
    assert name == "bench" and adapter and (adapter / "adapters.safetensors").is_file()
    assert yaml.safe_load(child_config_yaml(served))["serve"]["adapters"] == {"bench": str(adapter)}
    assert not cfg.serve.adapters  # the caller's config is left as it was
    assert B.with_bench_adapter(served, tmp_path) is served  # a configured adapter is used as is


def test_train_json_reports_trained_tokens_like_mlx_lm() -> None:
    """mlx-lm's tok/s counts trained (unmasked) tokens; bench must compare the same measure."""
    line = json.dumps(
        {"event": "train", "step": 3, "it_per_s": 2.0, "tokens_per_s": 900.0,
         "trained_tokens_per_s": 300.0, "peak_memory_gb": 0.1}
    )  # fmt: skip
    (report,) = B.parse_train_json(["noise", line])
    assert report["tokens_per_s"] == 300.0 and report["it_per_s"] == 2.0


@pytest.mark.e2e
def test_structured_bench_mixes_constrained_and_free(tiny_model: Path, tmp_path: Path) -> None:
    from mlxtune.bench import bench

    cfg = load_config(
        overrides=[
            f"model.path={tiny_model}",
            f"serve.usage_db={tmp_path / 'usage.sqlite'}",
            "bench.concurrency=[4]",
            "bench.requests_per_level=4",
            "bench.gen_tokens=32",
        ]
    )
    result = bench(cfg, what="structured")
    ratio = result.figure("structured", "c=4 half constrained / all free", "throughput_ratio")
    compliance = result.figure("structured", "c=4 half constrained / all free", "format_compliance")
    assert ratio is not None and ratio.mlxtune[0] > 0
    assert compliance is not None and compliance.mlxtune == [1.0]  # both constrained answers
    for case in ("all free", "half constrained"):
        ok = result.figure("structured", f"c=4 {case}", "ok")
        assert ok is not None and ok.mlxtune == [4.0]


def _result(rec: B.Recorder, settings: dict[str, object] | None = None) -> B.BenchResult:
    return B.BenchResult(["train"], "mlx-lm", 3, list(rec.figures.values()), {}, settings or {})


def test_speed_targets_judge_the_median_ratio_and_the_direction() -> None:
    from mlxtune.bench.targets import target_rows

    rec = B.Recorder()
    for ours, theirs in ((13.0, 10.0), (14.0, 10.0), (12.0, 10.0)):  # it/s: 1.3x median
        rec.add("train", "lora", "mlxtune", {"it_per_s": ours, "wall_s": 10.0})
        rec.add("train", "lora", "mlx-lm", {"it_per_s": theirs, "wall_s": 11.0})
    rows = {r["target"]: r for r in target_rows(_result(rec))}
    it = rows["train it/s"]
    assert it["met"] and it["median"] == pytest.approx(1.3) and it["min"] == pytest.approx(1.2)
    wall = rows["train whole command, wall"]  # 10 s vs 11 s: faster, but not 1.3x faster
    assert wall["median"] == pytest.approx(10 / 11) and not wall["met"]
    assert "train trained tokens/s" not in rows  # not measured, not judged


def test_data_targets_only_judged_at_their_row_count() -> None:
    from mlxtune.bench.targets import DATA_TARGET_ROWS, target_rows

    rec = B.Recorder()
    rec.add("data", "prepare", "mlxtune", {"wall_s": 30.0})
    rec.add("data", "validate-format", "mlxtune", {"wall_s": 9.0})
    assert target_rows(_result(rec, {"bench": {"data_rows": 2000}})) == []
    rows = target_rows(_result(rec, {"bench": {"data_rows": DATA_TARGET_ROWS}}))
    assert [(r["target"], r["met"]) for r in rows] == [
        ("validate-format, prepared", True),
        ("prepare", False),
    ]


def test_startup_bench_walks_every_command_of_the_live_app() -> None:
    from mlxtune.console import command_paths

    paths = command_paths()
    assert paths[""] == [] and paths["train"] == ["train"]
    assert paths["runs list"] == ["runs", "list"]
    assert len(paths) > 20


def test_synthetic_rows_are_repeatable_and_hold_the_planted_duplicates() -> None:
    from mlxtune.bench.datacheck import synthetic_rows

    rows = synthetic_rows(2000)
    assert rows == synthetic_rows(2000) and rows != synthetic_rows(2000, seed=1)
    exact = len(rows) - len({json.dumps(r, sort_keys=True) for r in rows})
    assert 20 <= exact <= 60  # ~2% planted


@pytest.mark.e2e
def test_bench_data_and_startup_sections_measure_real_commands(
    tiny_model: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        None,
        [f"model.path={tiny_model}", "bench.data_rows=300", "bench.startup_runs=1"],
    )
    result = B.bench(cfg, what="data", repeat=1)
    cases = {(f.case, f.metric) for f in result.figures}
    assert ("prepare", "wall_s") in cases and ("validate-format (cold)", "cpu_s") in cases
    assert any("prepared rows" in n for n in result.notes)
    from mlxtune.bench.startup import ROOT_CASE, bench_startup_once

    rec = B.Recorder()
    assert bench_startup_once(cfg, "mlx-lm", rec, lambda _m: None) is None
    fig = rec.figures[("startup", ROOT_CASE, "wall_ms")]
    assert fig.baseline and fig.baseline[0] > 0
