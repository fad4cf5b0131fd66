"""Running the app: bind the port (a clear error when it is taken), serve with uvicorn (with the
connection limits of `guard`) until SIGINT/SIGTERM or a dead worker, drain, and report."""

from __future__ import annotations

import math
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from mlxtune.errors import MlxtuneError
from mlxtune.runtime import blas_threads, resolve_blas_threads
from mlxtune.serve.app import create_app
from mlxtune.serve.guard import guarded_protocol
from mlxtune.serve.state import ServeState

if TYPE_CHECKING:
    from mlxtune.config import Config


@dataclass
class ServeResult:
    url: str
    models: list[str]
    requests: int


def serve(cfg: Config, on_ready: Callable[[str, list[str]], None] | None = None) -> ServeResult:
    """Load every model, bind, serve until SIGINT/SIGTERM, then drain and return."""
    import uvicorn

    app = create_app(cfg)
    state: ServeState = app.state.serve
    blas_threads(resolve_blas_threads(cfg.serve.blas_threads))  # process-wide: here, not in the app
    limits = cfg.serve
    sock, url = _bind(limits.host, limits.port)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=guarded_protocol(limits.header_timeout_s, limits.max_connections),
        timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]
        # The engine ends streams at shutdown_grace_s with an error event; uvicorn waits a
        # little longer so those events are sent before it cancels what is left.
        timeout_graceful_shutdown=math.ceil(limits.shutdown_grace_s) + 5,
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        names = list(state.models)
        orig_startup = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await orig_startup(sockets=sockets)
            on_ready(url, names)

        server.startup = startup  # type: ignore[method-assign]
    # uvicorn handles SIGINT/SIGTERM: stop accepting, finish in-flight requests, then the
    # lifespan exit stops the worker. The engine starts draining at the signal, so whatever
    # still runs after the grace period ends with an error event rather than a cut.
    orig_exit = server.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        state.engine.drain(limits.shutdown_grace_s)
        orig_exit(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    # A worker that died fails its requests and stops the server: exit non-zero, so a
    # supervisor restarts it, rather than a zombie answering 503.
    state.engine.on_death = lambda error: setattr(server, "should_exit", True)
    # uvicorn re-raises the signal it caught after its graceful shutdown; a no-op SIGTERM
    # handler turns that into a normal return (exit 0, usage log closed).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if state.engine.error is not None:
        raise MlxtuneError(
            f"generation worker died ({state.engine.error}); exiting so a supervisor restarts it"
        )
    return ServeResult(url=url, models=list(state.models), requests=state.metrics.total_requests())


def _bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening-ready socket on host:port (0 = any free port) and its URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on connections
    # of a socket that says it is TCP, and with Nagle on every response's body waited ~40 ms
    # for the client's delayed ACK of its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MlxtuneError(f"serve.port: cannot bind {host}:{port} ({e.strerror})") from None
    bound_host, bound_port = sock.getsockname()[:2]
    return sock, f"http://{bound_host}:{bound_port}"
