"""Running the app: bind the port (a clear error when it is taken), serve with uvicorn until
SIGINT/SIGTERM, drain, and report what was served."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlxtune.errors import MlxtuneError
from mlxtune.serve.app import create_app
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
    sock, url = _bind(cfg.serve.host, cfg.serve.port)
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=30, access_log=False, lifespan="on"
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
    # lifespan exit stops the worker.
    # uvicorn re-raises the signal it caught after its graceful shutdown; a no-op SIGTERM
    # handler turns that into a normal return (exit 0, usage log closed).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return ServeResult(url=url, models=list(state.models), requests=state.metrics.total_requests())


def _bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening-ready socket on host:port (0 = any free port) and its URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MlxtuneError(f"serve.port: cannot bind {host}:{port} ({e.strerror})") from None
    bound_host, bound_port = sock.getsockname()[:2]
    return sock, f"http://{bound_host}:{bound_port}"
