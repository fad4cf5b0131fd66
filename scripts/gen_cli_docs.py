"""Regenerate docs/cli.md with Typer's own docs command, docs/config.schema.json from the
config model and src/mlxtune/cli_help.json (the `--help` texts the `mlxtune` command prints
without importing Typer) from the live app, so none of them drifts (tests/test_cli.py,
tests/test_config.py and tests/test_cli_help_cache.py check them against the code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlxtune.config import json_schema
from mlxtune.console import write_help_cache

REPO = Path(__file__).resolve().parent.parent
# The same command `make docs` documents and the drift test runs: Typer's docs generator.
CLI_DOCS = ["-m", "typer", "mlxtune.cli", "utils", "docs", "--name", "mlxtune", "--output"]


def main() -> None:
    subprocess.run(
        [sys.executable, *CLI_DOCS, str(REPO / "docs" / "cli.md")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    schema = json.dumps(json_schema(), indent=2) + "\n"
    (REPO / "docs" / "config.schema.json").write_text(schema)
    write_help_cache()


if __name__ == "__main__":
    main()
