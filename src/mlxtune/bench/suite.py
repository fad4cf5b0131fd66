"""`bench()`: the chosen workloads, mlxtune and the baseline interleaved A B A B run by run, so
a noisy machine slows both sides alike and the ratio stays honest."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.bench.core import SECTIONS, BenchResult, Progress, Recorder, environment, targets
from mlxtune.bench.datacheck import bench_data
from mlxtune.bench.embed import bench_embed_direct_once, bench_embed_once, direct_baseline_name
from mlxtune.bench.generate import bench_generate
from mlxtune.bench.serve import (
    SEED_NOTE,
    bench_serve_once,
    blas_note,
    serve_adapter,
    stream_note,
    with_bench_adapter,
)
from mlxtune.bench.startup import bench_startup_once
from mlxtune.bench.structured import bench_structured
from mlxtune.bench.train import bench_train_once, check_data
from mlxtune.config import bench_sections
from mlxtune.errors import MlxtuneError, UsageError

if TYPE_CHECKING:
    from mlxtune.config import Config

# The train settings a bench file records (the rest are bench's own or the model's).
_TRAIN_SETTINGS = (
    "method",
    "batch_size",
    "learning_rate",
    "lora_rank",
    "num_layers",
    "max_seq_length",
    "mask_prompt",
    "grad_checkpoint",
)


def kernels_note() -> str:
    """How each side's fused CPU kernels are compiled (cpu_kernels.py): what every mlxtune
    child decides for itself, while the baseline keeps MLX's own flags and folder."""
    from mlxtune.cpu_kernels import describe

    return f"CPU kernels: mlxtune {describe()}; mlx-lm MLX's own flags ($TMPDIR/mlx)"


def _check_arguments(what: str, baseline: str, repeat: int) -> list[str]:
    """The sections to time; a bad argument is a one-line error naming its flag."""
    try:
        sections = bench_sections(what)
    except ValueError as e:
        raise UsageError(f"--what: {e}") from None
    if baseline not in ("none", "mlx-lm"):
        raise UsageError(f"--baseline: expected none or mlx-lm, got {baseline!r}")
    if repeat < 1:
        raise UsageError(f"--repeat: must be >= 1, got {repeat}")
    return sections


def _check_model(cfg: Config) -> None:
    """Every section loads model.path in a child process: a missing or unloadable model is one
    line here, not a child's traceback."""
    from mlxtune.data.records import load_tokenizer

    load_tokenizer(cfg.model)


def _settings(cfg: Config) -> dict[str, Any]:
    return {
        "model": cfg.model.path,
        "bench": cfg.bench.model_dump(mode="json"),
        "train": {k: getattr(cfg.train, k) for k in _TRAIN_SETTINGS},
        "data_dir": str(cfg.data.dir),
        "serve_adapter": serve_adapter(cfg)[0]
        if cfg.serve.adapters
        else "bench (a random LoRA adapter bench writes)",
    }


def bench(
    cfg: Config,
    *,
    what: str | None = None,
    baseline: str | None = None,
    repeat: int | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure the chosen workloads (`cfg.bench` unless given), interleaving mlxtune and the
    baseline run by run. Raises MlxtuneError when a workload cannot run at all."""
    say: Progress = progress or (lambda _msg: None)
    what = what or cfg.bench.what
    baseline = baseline or cfg.bench.baseline
    repeat = repeat or cfg.bench.repeat
    sections = _check_arguments(what, baseline, repeat)
    _check_model(cfg)
    sides = targets(baseline)
    env = environment()
    rec = Recorder()
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="mlxtune-bench-"))
    try:
        if sections == list(SECTIONS):
            try:
                check_data(cfg)
            except MlxtuneError as e:  # `all` still times what it can
                sections.remove("train")
                notes.append(f"train skipped: {e}")
        if "startup" in sections:
            slowest = set()
            for r in range(repeat):
                for target in sides:
                    say(f"startup [{target}] repeat {r + 1}/{repeat}")
                    slowest.add(bench_startup_once(cfg, target, rec, say))
            notes.append(
                f"startup: slowest verb --help: {', '.join(sorted(filter(None, slowest)))}"
            )
        if "data" in sections:
            notes.append(bench_data(cfg, work, rec, repeat, say))
        if baseline != "none" and {"train", "generate", "serve"} & set(sections):
            notes.append(kernels_note())
        if "train" in sections:
            if baseline != "none":
                notes.append(blas_note(cfg, "train"))
            for r in range(repeat):
                for target in sides:
                    say(f"train [{target}] repeat {r + 1}/{repeat}")
                    rec.add("train", "lora", target, bench_train_once(cfg, target, work, say))
        if "generate" in sections:
            bench_generate(cfg, rec, sides, repeat, say, work)
        if "embed" in sections:
            for r in range(repeat):
                for target in sides:
                    say(f"embed [{target}] repeat {r + 1}/{repeat}")
                    if target == "mlxtune":
                        bench_embed_once(cfg, work, rec, say)
                    else:
                        bench_embed_direct_once(cfg, rec, say)
        if "structured" in sections:
            bench_structured(cfg, work, rec, say, repeat)
        if "serve" in sections:
            served = with_bench_adapter(cfg, work)
            answers: dict[str, str] = {}
            for r in range(repeat):
                for target in sides:
                    say(f"serve [{target}] repeat {r + 1}/{repeat}")
                    answers[target] = bench_serve_once(served, target, work, rec, say, notes)
            if len(set(answers.values())) > 1:  # same adapter, greedy: the answers must agree
                notes.append(f"serve: the sides answered the first request differently: {answers}")
            if cfg.bench.seed_levels:
                notes.append(SEED_NOTE)
            notes += [blas_note(served), stream_note(served)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["loadavg_end"] = list(os.getloadavg())
    if "embed" in sections and baseline != "none":  # name the library embed's loop called
        library = direct_baseline_name(cfg)
        if sections == ["embed"]:
            baseline = library
        elif library != baseline:
            notes.append(f"embed's baseline figures are {library} called directly")
    return BenchResult(
        what=sections,
        baseline=baseline,
        repeat=repeat,
        figures=list(rec.figures.values()),
        environment=env,
        settings=_settings(cfg),
        notes=notes,
    )
