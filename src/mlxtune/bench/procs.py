"""Child processes, in one place: a free loopback port, a command run to completion (bounded
in time, its peak RSS sampled), and a server started on a free port, polled until ready and
always stopped. bench, the scripts and the tests all start their servers here."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mlxtune.errors import MlxtuneError
from mlxtune.runtime import subprocess_env, wait_until_ready

if TYPE_CHECKING:
    from mlxtune.config import Config

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a live process from /proc (no psutil)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process (all its threads) has used so far, from /proc.
    On a shared machine a server's CPU per token moves far less than its tokens per second."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        # fields after the command name, which is in parentheses and may hold spaces
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def cli_command() -> list[str]:
    """`python -m mlxtune` with this interpreter."""
    return [sys.executable, "-m", "mlxtune"]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: our BLAS preload, this checkout's mlxtune first on the path,
    then `extra` (which wins)."""
    env = subprocess_env()
    # Children must import this mlxtune (the worktree's src), not whatever else is installed.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def child_config_yaml(cfg: Config) -> str:
    """The resolved config for a child process: only the keys that were set (by file, --set or
    flag), so defaults stay defaults and pairs like lora_alpha/lora_scale do not both appear."""
    import yaml

    from mlxtune.config import absolute_paths

    tree = absolute_paths(cfg.model_dump(mode="json", exclude_unset=True))
    return yaml.safe_dump(tree, sort_keys=False)  # paths absolute: the file lives elsewhere


def tail(lines: list[str], n: int = 5) -> str:
    """The last `n` non-blank lines on one line, for an error message."""
    return " | ".join(line.strip() for line in lines[-n:] if line.strip())[-400:]


@dataclass
class ChildRun:
    returncode: int
    lines: list[str]
    max_rss_mb: float | None
    wall_s: float
    timed_out: bool
    cpu_s: float | None = None  # user + system CPU, the child's threads and children included


def run_child(
    cmd: list[str],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
) -> ChildRun:
    """Run a command to completion, collecting its merged output; bounded by `timeout`.
    Its max RSS is VmHWM sampled from /proc while it runs: getrusage/wait4 would report at least
    this (large) process's size, since a forked child keeps the parent's high-water mark."""
    t0 = time.perf_counter()
    # CPU from the children this process reaped meanwhile: on a loaded machine it moves far
    # less than wall time (bench runs one child at a time, so that is this one)
    cpu0 = _children_cpu()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        cwd=cwd,
        start_new_session=True,
    )
    lines: list[str] = []
    timed_out = threading.Event()
    done = threading.Event()
    hwm: list[float] = []

    def _kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)

    def _sample() -> None:
        while not done.wait(0.1):
            if (v := vm_hwm_mb(proc.pid)) is not None:
                hwm.append(v)

    timer = threading.Timer(timeout, _kill)
    sampler = threading.Thread(target=_sample, daemon=True)
    timer.start()
    sampler.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if on_line:
                on_line(line)
        proc.wait()
    finally:
        done.set()
        timer.cancel()
        if proc.returncode is None:
            _kill()
            proc.wait()
    sampler.join()
    rss = max(hwm) if hwm else None
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    return ChildRun(proc.returncode, lines, rss, wall, timed_out.is_set(), cpu_s=cpu)


def _children_cpu() -> float:
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


class Server:
    """A server subprocess on a loopback port, in its own process group.
    `log=None` lets its output through to ours; `ready_path` is polled until it answers 200."""

    def __init__(
        self,
        cmd: list[str],
        port: int,
        log: Path | None,
        *,
        ready_path: str = "/health",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "server",
    ) -> None:
        self.cmd, self.port, self.log = cmd, port, log
        self.ready_path, self.env, self.cwd, self.name = ready_path, env, cwd, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.max_rss_mb: float | None = None
        self.returncode: int | None = None
        self._log_f: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, ready_timeout: float) -> None:
        """Start and wait until ready; MlxtuneError (with the log's tail) when it never is."""
        out = open(self.log, "wb") if self.log else None  # noqa: SIM115 - closed in stop()
        self._log_f = out
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            env=child_env(self.env),
            cwd=self.cwd,
            start_new_session=True,
        )
        problem = wait_until_ready(self.proc, self.url + self.ready_path, ready_timeout)
        if problem:
            raise MlxtuneError(f"{self.name} {problem}: {self.tail()}")

    def tail(self) -> str:
        if self.log is not None:
            with contextlib.suppress(OSError):
                return tail(self.log.read_text(errors="replace").splitlines())
        return ""

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL after `timeout` s; keeps max RSS and exit code."""
        if self.proc is None:
            return
        self.max_rss_mb = vm_hwm_mb(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.returncode = self.proc.returncode
        if self._log_f is not None:
            self._log_f.close()
        self.proc = None


@contextlib.contextmanager
def running_server(
    cmd_for_port: Callable[[int], list[str]],
    log: Path | None,
    ready_timeout: float,
    *,
    ready_path: str = "/health",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    name: str = "server",
) -> Iterator[Server]:
    """A started `Server` on a free port (options as for Server), stopped on exit."""
    port = free_port()
    server = Server(
        cmd_for_port(port), port, log, ready_path=ready_path, env=env, cwd=cwd, name=name
    )
    try:
        server.start(ready_timeout)
        yield server
    finally:
        server.stop()
