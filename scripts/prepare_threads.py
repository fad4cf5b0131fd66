"""Where `mlxtune prepare`'s CPU goes, per thread: prepare run in this process on the synthetic
rows `mlxtune bench --what data` uses, printing when each step starts (wall, main thread CPU),
then the main thread's CPU, each tokenizer thread's CPU inside the Rust `encode_batch`, the
cyclic GC's passes and the whole process's CPU. On 2 idle cores the wall is about the larger of
the main thread and half the total, plus the start (tokenizer load) and the end (split, write).

    python scripts/prepare_threads.py                    # 100,000 rows, this checkout
    PYTHONPATH=/work/main/src python scripts/prepare_threads.py --work /tmp/pt-main   # main
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if "PYTHONPATH" not in os.environ:
    sys.path.insert(0, str(REPO / "src"))

from mlxtune import formats  # noqa: E402
from mlxtune.bench.datacheck import write_workload  # noqa: E402
from mlxtune.config import load_config  # noqa: E402
from mlxtune.data.prepare import prepare  # noqa: E402


class _TimedBackend:
    """The Rust tokenizer with each encode_batch's thread CPU added to `per_thread`."""

    def __init__(self, backend: Any, per_thread: dict[str, float]) -> None:
        self._backend, self._per_thread = backend, per_thread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def encode_batch(self, *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        out = self._backend.encode_batch(*args, **kwargs)
        self._per_thread[threading.current_thread().name] += time.thread_time() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="build/tiny-model")
    parser.add_argument("--work", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    config = write_workload(str(Path(args.model).resolve()), args.rows, work)
    cfg = load_config(config)

    rust: dict[str, float] = defaultdict(float)
    direct = formats._direct_backend
    formats._direct_backend = lambda hf: (
        None if (b := direct(hf)) is None else _TimedBackend(b, rust)
    )
    collected = {"s": 0.0, "full": 0}
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.thread_time()
        else:
            collected["s"] += time.thread_time() - gc_start[0]
            collected["full"] += info["generation"] == 2

    gc.callbacks.append(on_gc)
    wall, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()

    def say(message: str) -> None:
        now = time.perf_counter() - wall
        print(f"{now:7.2f} s  main CPU {time.thread_time() - main_cpu:6.2f} s  {message}")

    prepare(cfg, force=True, progress=say)
    print(
        f"wall {time.perf_counter() - wall:.1f} s; CPU: main thread "
        f"{time.thread_time() - main_cpu:.1f} s, Rust encode_batch "
        + ", ".join(f"{name} {s:.1f} s" for name, s in sorted(rust.items()) if s >= 0.05)
        + f", cyclic GC {collected['s']:.1f} s ({collected['full']} full passes), "
        f"process {time.process_time() - cpu:.1f} s; load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
