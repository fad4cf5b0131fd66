"""`mlxtune serve`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mlxtune.cli import mlx_lm_flags as mlx
from mlxtune.cli.common import (
    ConfigOpt,
    SetOpt,
    console,
    err_console,
    escape,
    handles_errors,
    resolve,
)
from mlxtune.errors import UsageError


@handles_errors
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1).", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (default 8000; 0 = any).", show_default=False)
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", help="Serve an adapter: NAME=PATH. Repeatable.", show_default=False
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (or env MLXTUNE_API_KEY).", show_default=False
        ),
    ] = None,
    model: mlx.ModelFlag = None,  # mlx_lm.server's names (hidden)
    adapter_path: mlx.AdapterPathFlag = None,
) -> None:
    """Serve the base model and named adapters with an OpenAI-compatible API."""
    from mlxtune.serve import serve as run_server

    flags: dict[str, Any] = {"serve__host": host, "serve__port": port, "serve__api_key": api_key}
    flags["model__path"] = model
    if adapter_path is not None:
        flags[f"serve__adapters__{adapter_path.name}"] = str(adapter_path)
    for item in adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or "." in name or not path.strip():
            raise UsageError(f"--adapter {item!r}: expected NAME=PATH")
        flags[f"serve__adapters__{name.strip()}"] = path.strip()
    cfg = resolve(config, set_, **flags)
    if cfg.serve.host not in ("127.0.0.1", "localhost", "::1") and not (
        cfg.serve.resolved_api_key()
    ):
        err_console.print(
            f"[yellow]warning:[/yellow] binding {cfg.serve.host} with no API key: anyone who "
            "can reach this port can use the models (set serve.api_key or MLXTUNE_API_KEY)"
        )

    def ready(url: str, names: list[str]) -> None:
        # /docs needs the key when one is set, unless serve.public_endpoints opens it
        docs_open = not cfg.serve.resolved_api_key() or "/docs" in cfg.serve.public_endpoints
        docs = f"  (docs: {url}/docs)" if docs_open else ""
        console.print(f"[green]serving[/green] {escape(', '.join(names))} at {url}{docs}")

    err_console.print("loading models ...")
    result = run_server(cfg, on_ready=ready)
    console.print(f"stopped after {result.requests} request(s)")
