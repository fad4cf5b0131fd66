"""bench generate: mlxtune's generation path (load_model + encode_prompt + mlx-lm's
stream/batch_generate) beside `mlx_lm benchmark`, each (prompt length, batch) cell in a fresh
child process on both sides so warm-up and max RSS are like for like."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.bench.core import Progress, Recorder, Target, filler
from mlxtune.bench.procs import child_config_yaml, run_child, tail
from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config


def make_prompts(tokenizer: Any, length: int, batch: int) -> list[list[int]]:
    """`batch` distinct chat prompts of exactly `length` tokens, rendered by formats.encode_prompt.
    Long prompts are cut from the front, so the template's generation suffix stays intact."""
    from mlxtune.formats import encode_prompt

    prompts = []
    for row in range(batch):
        text, ids = "", list[int]()
        while len(ids) < length:
            text += f"Question {row}: " + filler(row + len(text)) + "\n"
            ids = encode_prompt(tokenizer, [{"role": "user", "content": text}])
        prompts.append(list(ids[-length:]))
    return prompts


def _generate_once(
    model: Any, tokenizer: Any, prompts: list[list[int]], gen_tokens: int
) -> dict[str, float | None]:
    import mlx.core as mx
    from mlx_lm import batch_generate, stream_generate

    mx.reset_peak_memory()
    if len(prompts) == 1:
        t0 = time.perf_counter()
        first: float | None = None
        last = None
        for response in stream_generate(model, tokenizer, prompts[0], max_tokens=gen_tokens):
            if first is None:
                first = time.perf_counter() - t0
            last = response
        assert last is not None
        prompt_tps, gen_tps, peak = last.prompt_tps, last.generation_tps, last.peak_memory
    else:
        stats = batch_generate(model, tokenizer, prompts, max_tokens=gen_tokens).stats
        prompt_tps, gen_tps, peak = stats.prompt_tps, stats.generation_tps, stats.peak_memory
        first = None
    n_prompt = sum(len(p) for p in prompts)
    return {
        "prompt_tps": prompt_tps,
        "generation_tps": gen_tps,
        # The same definition for both sides: prompt processing time, from prompt_tps.
        "ttft_ms": 1000 * n_prompt / prompt_tps if prompt_tps else None,
        "ttft_measured_ms": 1000 * first if first is not None else None,
        "peak_memory_gb": peak,
    }


_BENCH_AVERAGES = re.compile(
    r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+), peak_memory=([\d.]+)"
)


def parse_mlx_benchmark(lines: list[str]) -> dict[str, float]:
    for line in lines:
        if m := _BENCH_AVERAGES.search(line):
            return {
                "prompt_tps": float(m[1]),
                "generation_tps": float(m[2]),
                "peak_memory_gb": float(m[3]),
            }
    raise MlxtuneError(f"bench generate (mlx-lm): no 'Averages:' line: {tail(lines)}")


def _baseline_generate(cfg: Config, length: int, batch: int) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "mlx_lm", "benchmark",
        "--model", cfg.model.path,
        "-p", str(length), "-g", str(cfg.bench.gen_tokens), "-b", str(batch),
        "-n", str(cfg.bench.trials),
    ]  # fmt: skip
    run = run_child(cmd, timeout=cfg.bench.time_limit_s)
    if run.timed_out:
        raise MlxtuneError(f"bench generate (mlx-lm): over bench.time_limit_s={run.wall_s:.0f}s")
    if run.returncode != 0:
        raise MlxtuneError(f"bench generate (mlx-lm): exit {run.returncode}: {tail(run.lines)}")
    out = parse_mlx_benchmark(run.lines)
    out["ttft_ms"] = 1000 * length * batch / out["prompt_tps"] if out["prompt_tps"] else 0.0
    if run.max_rss_mb:
        out["max_rss_mb"] = run.max_rss_mb
    return out


def generate_cell(cfg: Config, length: int, batch: int) -> dict[str, float | None]:
    """mlxtune's generation path on one (prompt length, batch) cell: load, warm up with the
    full workload once, then average `bench.trials` timed runs (as mlx_lm benchmark does)."""
    from mlxtune.modeling import load_model

    model, tokenizer, _ = load_model(cfg.model)
    # Fixed lengths need generation past EOS; mlx_lm benchmark does the same.
    tokenizer._eos_token_ids = set()
    prompts = make_prompts(tokenizer, length, batch)
    _generate_once(model, tokenizer, prompts, cfg.bench.gen_tokens)
    runs = [
        _generate_once(model, tokenizer, prompts, cfg.bench.gen_tokens)
        for _ in range(cfg.bench.trials)
    ]
    out: dict[str, float | None] = {}
    for key in runs[0]:
        values = [v for r in runs if (v := r[key]) is not None]
        if not values:
            out[key] = None
        elif key == "peak_memory_gb":
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


# Each cell runs in a fresh process on both sides, so max RSS and warm-up are like for like.
_CELL_MAIN = r"""
import json, sys
from mlxtune.bench.generate import generate_cell
from mlxtune.config import load_config
figs = generate_cell(load_config(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
print("MLXTUNE_BENCH " + json.dumps(figs), flush=True)
"""


def _mlxtune_generate(cfg_file: Path, length: int, batch: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _CELL_MAIN, str(cfg_file), str(length), str(batch)]
    run = run_child(cmd, timeout=timeout)
    line = next((x for x in run.lines if x.startswith("MLXTUNE_BENCH ")), None)
    if run.timed_out or run.returncode != 0 or line is None:
        raise MlxtuneError(f"bench generate (mlxtune): exit {run.returncode}: {tail(run.lines)}")
    out: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    out["max_rss_mb"] = run.max_rss_mb
    return out


def bench_generate(
    cfg: Config,
    rec: Recorder,
    targets: list[Target],
    repeat: int,
    progress: Progress,
    work: Path,
) -> None:
    b = cfg.bench
    cfg_file = work / "generate.yaml"
    cfg_file.write_text(child_config_yaml(cfg))
    cells = [(p, bs) for p in b.prompt_lengths for bs in b.batch_sizes]
    for r in range(repeat):
        for p, bs in cells:
            case = f"p={p} b={bs}"
            for target in targets:
                progress(f"generate {case} [{target}] repeat {r + 1}/{repeat}")
                if target == "mlxtune":
                    figs = _mlxtune_generate(cfg_file, p, bs, b.time_limit_s)
                else:
                    figs = dict(_baseline_generate(cfg, p, bs))
                rec.add("generate", case, target, figs)
