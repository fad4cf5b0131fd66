"""`mlxtune verify`: exit 0 the endpoint serves the run, 1 it does not, 2 could not check."""

from __future__ import annotations

from typing import Annotated

import typer

from mlxtune.cli.common import ConfigOpt, JsonOpt, SetOpt, console, handles_errors, resolve
from mlxtune.errors import GateFailed


@handles_errors
def verify(
    run: Annotated[
        str | None, typer.Argument(help="Run name, path or @alias (default: latest).")
    ] = None,
    endpoint: Annotated[
        str, typer.Option(help="Base URL of the OpenAI-compatible server to check.")
    ] = "",
    model: Annotated[
        str | None,
        typer.Option(help="Model name to ask (default: the one /health says holds the run)."),
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Test-split questions to compare.")] = 8,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Prove a server serves the run: /health names its adapter sha256, and N test questions
    asked greedily are answered token for token as the run answers them here.

    Exit codes: 0 it does, 1 it does not (the first mismatch is shown), 2 usage errors.
    """
    from mlxtune.errors import UsageError
    from mlxtune.render.output import write_json
    from mlxtune.verify import verify as verify_run

    if not endpoint:
        raise UsageError("--endpoint: required (the server's base URL)")
    result = verify_run(resolve(config, set_), run, endpoint, model=model, n=n)
    if json_:
        write_json(result.to_dict())
    else:
        console.print(
            f"run {result.run} (adapter sha256 {result.adapter_sha256[:12]})", markup=False
        )
        console.print(f"health: {result.health}", markup=False, soft_wrap=True)
        console.print(
            f"answers: {result.equal}/{result.compared} identical from {result.model!r} "
            f"at {result.endpoint}",
            markup=False,
            soft_wrap=True,
        )
        m = result.mismatch
        if m is not None:
            console.print(
                f"first mismatch, question {m.index + 1}: {m.question}",
                markup=False,
                soft_wrap=True,
            )
            console.print("\n".join(m.diff()), markup=False, soft_wrap=True)
            if m.matches_base:
                console.print(
                    f"{result.model!r} answers as the base model: the adapter is not applied",
                    markup=False,
                    soft_wrap=True,
                )
    if not result.passed:
        raise GateFailed(f"{result.endpoint} does not serve run {result.run}")
