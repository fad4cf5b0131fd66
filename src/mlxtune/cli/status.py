"""`mlxtune status`."""

from __future__ import annotations

from mlxtune.cli.common import ConfigOpt, JsonOpt, SetOpt, console, handles_errors, resolve


@handles_errors
def status(config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Where this project stands: device, prepared data, runs and aliases, server, graph.

    Reads only; writes nothing. Exit 0 whatever it finds (2 on a bad config)."""
    from mlxtune.render.output import write_json
    from mlxtune.render.status import print_status
    from mlxtune.status import status as run_status

    cfg = resolve(config, set_)
    result = run_status(cfg, config_path=config)
    if json_:
        write_json(result.to_dict())
    else:
        print_status(console, result)
