"""Process set-up that must happen before `mlx.core` is imported.

MLX's Linux CPU wheel links a reference BLAS (~5 GFLOP/s here). Loading OpenBLAS with
RTLD_GLOBAL first makes MLX's `sgemm` calls resolve to it (100-200 GFLOP/s, 15-27x faster
training). `mlxtune/__init__.py` installs `preload_openblas_before_mlx()`, so every entry point
gets it the moment anything first imports `mlx`, and commands that never touch mlx (`--help`)
skip the ~15 ms dlopen.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

DISABLE_ENV = "MLXTUNE_OPENBLAS"  # "0" disables; a path picks a specific library
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_loaded: str | None = None
_status = "not attempted"


def find_openblas() -> str | None:
    choice = os.environ.get(DISABLE_ENV, "")
    if choice and choice not in ("0", "1"):
        return choice if Path(choice).exists() else None
    return next((p for p in OPENBLAS_CANDIDATES if Path(p).exists()), None)


def preload_openblas() -> str | None:
    """Load OpenBLAS globally on Linux, once. Returns the path loaded, or None."""
    global _loaded, _status
    if _loaded or _status != "not attempted":
        return _loaded
    if not sys.platform.startswith("linux"):
        _status = "not needed (MLX uses Accelerate/Metal here)"
        return None
    if os.environ.get(DISABLE_ENV) == "0":
        _status = f"disabled by {DISABLE_ENV}=0"
        return None
    if "mlx.core" in sys.modules and "openblas" not in os.environ.get("LD_PRELOAD", ""):
        _status = "too late: mlx.core was imported before mlxtune"
        return None
    path = find_openblas()
    if path is None:
        _status = "OpenBLAS not found (apt-get install libopenblas0-pthread)"
        return None
    import ctypes

    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        _status = f"failed to load {path}: {e}"
        return None
    _loaded = path
    _status = f"loaded {path}"
    return path


class _PreloadBeforeMlx:
    """A meta path finder that finds nothing: it loads OpenBLAS when `mlx` is first looked up
    (before `mlx.core`'s shared library is loaded), in a command sets up the CPU kernels'
    compiler (`cpu_kernels.use_vector_kernels`), then removes itself."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "mlx" or name.startswith("mlx."):
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            preload_openblas()
            if _one_command:  # a command, not a library caller: its kernels (cpu_kernels.py)
                from mlxtune.cpu_kernels import use_vector_kernels

                use_vector_kernels()
        return None


def preload_openblas_before_mlx() -> None:
    """Load OpenBLAS now if mlx is already imported (too late is reported), else on first
    `import mlx`."""
    if "mlx" in sys.modules:
        preload_openblas()
    elif not any(isinstance(f, _PreloadBeforeMlx) for f in sys.meta_path):
        sys.meta_path.insert(0, _PreloadBeforeMlx())


# transformers 5 builds its lazy import table by reading every file under transformers/models
# (~560 folders), twice per process: once in `transformers/__init__` and again when
# `models/__init__` is first imported (mlx-lm's `from transformers import AutoTokenizer`).
# The per-folder results are memoized with `lru_cache(maxsize=128)`, too small to keep any of
# them for the second pass; an unbounded cache makes that pass free (0.4-0.5 s of every
# command that loads a model, measured here). Same results, only remembered.
# The first pass is the same in every process until transformers is reinstalled, so its
# result is also kept on disk (`cache_dir()`), keyed by the folder and the
# installed files' times: another 0.5-0.6 s of every command that loads a model.
_TRANSFORMERS_IMPORT_TABLE = "transformers.utils.import_utils"


class _WidenTransformersImportCache:
    """A meta path finder that, when transformers' import utilities are first imported, lets
    the normal finder load them and then swaps the folder scan's bounded cache for an
    unbounded one. Removes itself; does nothing to a transformers that has no such cache."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != _TRANSFORMERS_IMPORT_TABLE:
            return None
        from importlib.machinery import PathFinder

        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_widen(module: ModuleType) -> None:
            exec_module(module)
            widen_folder_scan_cache(module)

        loader.exec_module = exec_then_widen  # type: ignore[method-assign]
        return spec


def widen_folder_scan_cache(module: ModuleType) -> bool:
    """Give `module.create_import_structure_from_path` an unbounded cache, and keep the scan of
    transformers/models on disk; False when the scan is not a bounded `lru_cache` (a
    transformers that changed it)."""
    import functools

    scan = getattr(module, "create_import_structure_from_path", None)
    cache_info = getattr(scan, "cache_info", None)
    wrapped = getattr(scan, "__wrapped__", None)
    if cache_info is None or wrapped is None or cache_info().maxsize is None:
        return False
    module.create_import_structure_from_path = functools.lru_cache(maxsize=None)(wrapped)  # type: ignore[attr-defined]
    define = getattr(module, "define_import_structure", None)
    module_file = getattr(module, "__file__", None)
    if callable(define) and module_file:  # transformers/utils/import_utils.py
        models = Path(module_file).resolve().parent.parent / "models"
        module.define_import_structure = _remembered(define, models, Path(module_file))  # type: ignore[attr-defined]
    return True


CACHE_ENV = "MLXTUNE_CACHE_DIR"  # mlxtune's own cache (import table, CPU kernels); "0": none


def cache_dir() -> Path | None:
    """$MLXTUNE_CACHE_DIR, else $XDG_CACHE_HOME/mlxtune, else ~/.cache/mlxtune; None when
    MLXTUNE_CACHE_DIR is "0" (keep nothing)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == "0":
        return None
    if chosen:
        return Path(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlxtune"


def _remembered(define: Callable[..., Any], models: Path, source: Path) -> Callable[..., Any]:
    """`define_import_structure`, its result for the `models` folder read from disk when an
    earlier process kept it for the same install, and kept when not. The key holds the
    folder, the prefix and the modification times of the folder and of `source` (both change
    when transformers is reinstalled or upgraded). A missing, unreadable or corrupt file, or a
    cache folder that cannot be written, only means the folder is scanned as before. Memoized
    in the process like the original (its caller extends the table it gets, in place)."""
    import functools

    @functools.cache
    def define_import_structure(module_path: Any, prefix: str | None = None) -> Any:
        folder = Path(module_path)
        if folder.suffix == ".py":  # transformers scans a file's folder
            folder = folder.parent
        cache = cache_dir()
        try:
            if cache is None or folder.resolve() != models:
                return define(module_path, prefix)
            key = f"{models}|{prefix}|{models.stat().st_mtime_ns}|{source.stat().st_mtime_ns}"
        except OSError:
            return define(module_path, prefix)
        import hashlib

        path = cache / f"transformers-imports-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
        kept = _read_import_table(path)
        if kept is not None:
            return kept
        table = define(module_path, prefix)
        _write_import_table(path, table)
        return table

    return define_import_structure


def _read_import_table(path: Path) -> dict[frozenset[str], dict[str, set[str]]] | None:
    import json

    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {frozenset(b): {m: set(names) for m, names in mods.items()} for b, mods in rows}
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _write_import_table(path: Path, table: Any) -> None:
    """JSON (frozenset keys and sets as sorted lists), written to a temp file and renamed so a
    concurrent reader never sees half of it."""
    import json
    import tempfile

    tmp: str | None = None
    try:
        rows = [[sorted(b), {m: sorted(n) for m, n in mods.items()}] for b, mods in table.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        os.replace(tmp, path)
    except (OSError, TypeError, AttributeError):
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def widen_transformers_import_cache() -> None:
    """Install `_WidenTransformersImportCache` unless transformers is already imported."""
    if _TRANSFORMERS_IMPORT_TABLE in sys.modules:
        return
    if not any(isinstance(f, _WidenTransformersImportCache) for f in sys.meta_path):
        sys.meta_path.insert(0, _WidenTransformersImportCache())


# True once the `mlxtune` entry point runs a command: the process then does one job and ends,
# so what loading makes can leave the cyclic GC and the interpreter's teardown can be skipped.
# Library callers (tests, notebooks, a bench in-process) keep Python's defaults.
_one_command = False
_frozen = False  # `long_lived` has frozen the heap once


def run_as_command(command: Callable[[], object]) -> NoReturn:
    """Run the CLI's `command` (which ends in `SystemExit`, as Click's does) as this process's
    one job, then exit with its code through `exit_now`."""
    global _one_command
    _one_command = True
    if "mlx" in sys.modules:  # imported already: `_PreloadBeforeMlx` will not see it
        from mlxtune.cpu_kernels import use_vector_kernels

        use_vector_kernels()
    try:
        command()
        code: object = 0
    except SystemExit as e:
        code = e.code
    exit_now(code)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off for the block, back as it was after (reference counting still frees)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Around loading a model: the cyclic GC pauses while mlx-lm, transformers (~90k objects
    on import) and the weights load, and what that made is then frozen out of later
    collections, which otherwise re-walk it on every full pass and once more at exit (0.2-0.3 s
    a command, measured). Only in a process run by `run_as_command`, and only the first load
    freezes: frozen cycles are never freed, which neither a test session loading hundreds of
    models nor a server loading adapters between requests (freezing those requests' objects)
    may accumulate."""
    global _frozen
    if not _one_command:
        yield
        return
    with gc_paused():
        try:
            yield
        finally:
            if not _frozen:
                gc.freeze()  # before the GC is back: nothing made by the load is collected
                _frozen = True


def exit_now(code: object) -> NoReturn:
    """`sys.exit(code)` without the interpreter's teardown, which frees every module and the
    loaded model object by object (0.3-0.45 s after a training run here) and has nothing left
    to save: atexit handlers still run and stdout and stderr are flushed. With another
    non-daemon thread alive (work a normal exit would wait for), or under a profiler or
    tracer that writes its report after the program returns (`python -m cProfile`), it is a
    normal exit."""
    import atexit
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # as Python's exit: the object printed, status 1
        print(code, file=sys.stderr)
        code = 1
    main = threading.main_thread()
    others = [t for t in threading.enumerate() if t is not main and not t.daemon]
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    observed = sys.getprofile() is not None or sys.gettrace() is not None
    if others or observed or run_exitfuncs is None:
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def blas_threads(n: int | None = None) -> int | None:
    """OpenBLAS's thread count, after setting it to `n` when given; None when no OpenBLAS
    was loaded (macOS, MLXTUNE_OPENBLAS=0) and nothing was changed."""
    if _loaded is None:
        return None
    import ctypes

    lib = ctypes.CDLL(_loaded)  # already loaded: the same library, not a second copy
    if n is not None:
        lib.openblas_set_num_threads(n)
    return int(lib.openblas_get_num_threads())


def resolve_blas_threads(setting: int) -> int:
    """`serve.blas_threads`: as set, else OPENBLAS_NUM_THREADS, else one fewer than the CPUs
    this process may use (at least 1). On 2 cores a 2-thread matmul waits, every step, for
    whichever half the event loop or a tokenizer thread preempted."""
    if setting:
        return setting
    env = os.environ.get("OPENBLAS_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cpus() - 1)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


# MLX orders an eval's work breadth-first from the outputs, but at most this many arrays wide
# (20 by default), then depth-first; read once, at the process's first eval. The training
# step's hundreds of gradient and optimizer outputs pass 20 at once, so depth-first puts every
# op of one CPU stream's half of the batch before the other's, and with only 10 tasks let ahead
# (MAX_ACTIVE_TASKS) the streams take turns instead of running together. Wide enough, the two
# halves' ops interleave level by level (docs/benchmarks.md, issue 18, window 8).
EVAL_WIDTH_ENV = "MLX_BFS_MAX_WIDTH"
EVAL_WIDTH = 100_000


def train_cpu_streams(
    setting: int, batch_size: int, world_size: int, on_cpu: bool
) -> tuple[int, str]:
    """`train.cpu_streams` resolved: (streams, why). One on a GPU or with several ranks (each
    rank already has its cores); else as set, else one per usable CPU, at most the batch."""
    if not on_cpu:
        return 1, "not on a CPU"
    if world_size > 1:
        return 1, f"{world_size} ranks share the CPUs"
    if setting:
        return min(setting, batch_size), "train.cpu_streams"
    n = min(usable_cpus(), batch_size)
    return n, f"one per CPU, at most the batch of {batch_size}"


_eval_width_set = False  # by `order_evals_for_streams`, not the user: children do not inherit it


def order_evals_for_streams() -> bool:
    """Let MLX interleave the CPU streams' work (`EVAL_WIDTH_ENV`), unless the user set it.
    Before the process's first eval, or it changes nothing; True when it was set here."""
    global _eval_width_set
    if EVAL_WIDTH_ENV in os.environ:
        return False
    os.environ[EVAL_WIDTH_ENV] = str(EVAL_WIDTH)
    _eval_width_set = True
    return True


# A model narrower than this trains faster on a CPU with one OpenBLAS thread: its matmuls are
# too small to gain from a split, and the second thread competes with the loop's host work
# (docs/benchmarks.md, issue 18: width 256 equal when idle, 1.5x slower with one core busy;
# width 512 trains 1.35x faster with two threads on 2 cores).
NARROW_MODEL_WIDTH = 512


def train_blas_threads(setting: int, width: int | None, streams: int = 1) -> tuple[int | None, str]:
    """`train.blas_threads` resolved for a model `width` wide (its hidden size, None when
    unknown) trained on `streams` CPU streams: (threads to set, None to leave OpenBLAS as it
    is; why). As set, else the user's OPENBLAS_NUM_THREADS, else one thread with several
    streams or for a narrow model, else OpenBLAS's own."""
    if setting:
        return setting, "train.blas_threads"
    env = os.environ.get("OPENBLAS_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return None, "OPENBLAS_NUM_THREADS"
    if streams > 1:
        return 1, f"{streams} CPU streams, each on a core of its own"
    if width is not None and width < NARROW_MODEL_WIDTH:
        return 1, f"hidden size {width} < {NARROW_MODEL_WIDTH}: matmuls too small to split"
    return None, "OpenBLAS's default"


def blas_status() -> str:
    return _status


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes (raw mlx-lm baselines, servers) with the same BLAS, and
    the user's PATH and TMPDIR (`cpu_kernels.restore_user_env`)."""
    preload_openblas()  # the child needs the path even if this process never imported mlx
    out = user_environ(env)
    if _loaded and _loaded not in out.get("LD_PRELOAD", ""):
        out["LD_PRELOAD"] = ":".join(p for p in (_loaded, out.get("LD_PRELOAD")) if p)
    return out


def user_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default: this process's) with the user's PATH and TMPDIR back where
    `cpu_kernels.use_vector_kernels` changed them, and without the eval width that
    `order_evals_for_streams` set."""
    out = dict(os.environ if env is None else env)
    if _eval_width_set and out.get(EVAL_WIDTH_ENV) == str(EVAL_WIDTH):
        del out[EVAL_WIDTH_ENV]
    kernels = sys.modules.get("mlxtune.cpu_kernels")
    return kernels.restore_user_env(out) if kernels is not None else out


def wait_until_ready(proc: subprocess.Popen[Any], url: str, timeout: float) -> str | None:
    """Poll `url` until it answers 200. Returns None when ready, else why not: the process
    exited, or `timeout` seconds passed. Servers started by bench, tests and scripts use this."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return None
        time.sleep(0.2)
    return f"not ready after {timeout:g} s"
