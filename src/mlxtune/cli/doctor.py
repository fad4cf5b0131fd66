"""`mlxtune doctor`."""

from __future__ import annotations

import typer

from mlxtune.cli.common import JsonOpt, console, handles_errors


@handles_errors
def doctor(json_: JsonOpt = False) -> None:
    """Check this machine: versions, device, BLAS speed, memory, hub cache and offline state."""
    from mlxtune.doctor import run_doctor
    from mlxtune.render.doctor import print_doctor
    from mlxtune.render.output import write_json

    report = run_doctor()
    if json_:
        write_json(report.to_dict())
    else:
        print_doctor(console, report)
    if not report.ok:
        raise typer.Exit(1)
