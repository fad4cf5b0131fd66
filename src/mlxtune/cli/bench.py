"""`mlxtune bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlxtune.cli.common import ConfigOpt, SetOpt, console, handles_errors, resolve


@handles_errors
def bench_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    what: Annotated[
        str | None,
        typer.Option(
            "--what",
            help="train, generate, serve, embed, structured, startup, data, a comma list, or all.",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="none, or mlx-lm: run raw mlx-lm beside each figure."),
    ] = None,
    repeat: Annotated[
        int | None, typer.Option("--repeat", help="Runs per figure; min/median/max shown.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write figures and environment to FILE.")
    ] = None,
) -> None:
    """Time train, generate and serve (speed and memory), beside raw mlx-lm with the ratio."""
    from mlxtune.bench import bench
    from mlxtune.io import atomic_write_json
    from mlxtune.render.bench import print_bench

    cfg = resolve(config, set_, bench__what=what, bench__baseline=baseline, bench__repeat=repeat)
    with console.status("bench") as status:
        result = bench(cfg, progress=lambda msg: status.update(f"bench: {msg}"))
    print_bench(console, result)
    if json_out:
        atomic_write_json(json_out, result.to_dict())
        console.print(f"wrote {json_out}")
