"""`mlxtune bench`: speed and memory figures, each beside raw mlx-lm on the same workload.

  core.py      figures, their arithmetic (summarize, ratio), BenchResult, environment()
  train.py     `mlxtune train --json` vs `mlx_lm lora`, both child processes
  generate.py  load_model + encode_prompt + stream/batch_generate vs `mlx_lm benchmark`
  serve.py     `mlxtune serve` vs `mlx_lm.server`, driven over loopback by the same client
  procs.py     THE place for child processes, free ports and server start/stop
  suite.py     bench(): the chosen workloads, mlxtune and baseline interleaved A B A B
Nothing here prints; progress goes through the `progress` callback.
"""

from __future__ import annotations

from mlxtune.bench.core import (
    METRICS,
    SCHEMA_VERSION,
    BenchResult,
    Figure,
    Progress,
    Recorder,
    Target,
    environment,
    ratio,
    summarize,
    targets,
)
from mlxtune.bench.generate import (
    bench_generate,
    generate_cell,
    make_prompts,
    parse_mlx_benchmark,
)
from mlxtune.bench.procs import (
    ChildRun,
    Server,
    child_config_yaml,
    free_port,
    run_child,
    running_server,
)
from mlxtune.bench.serve import (
    LoadResult,
    bench_serve_once,
    drive,
    health_ms,
    run_load,
    serve_adapter,
    serve_phases,
    serve_prompts,
    server_command,
    with_bench_adapter,
)
from mlxtune.bench.suite import bench
from mlxtune.bench.train import (
    aggregate_train,
    bench_train_once,
    parse_lora_output,
    parse_train_json,
    train_command,
    train_schedule,
)
from mlxtune.stats import percentile

__all__ = [
    "METRICS",
    "SCHEMA_VERSION",
    "BenchResult",
    "ChildRun",
    "Figure",
    "LoadResult",
    "Progress",
    "Recorder",
    "Server",
    "Target",
    "aggregate_train",
    "bench",
    "bench_generate",
    "bench_serve_once",
    "bench_train_once",
    "child_config_yaml",
    "drive",
    "environment",
    "free_port",
    "generate_cell",
    "health_ms",
    "make_prompts",
    "parse_lora_output",
    "parse_mlx_benchmark",
    "parse_train_json",
    "percentile",
    "ratio",
    "run_child",
    "run_load",
    "running_server",
    "serve_adapter",
    "serve_phases",
    "serve_prompts",
    "server_command",
    "summarize",
    "targets",
    "train_command",
    "train_schedule",
    "with_bench_adapter",
]
