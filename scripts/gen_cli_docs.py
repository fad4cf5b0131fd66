"""Regenerate docs/cli.md with Typer's own docs command and docs/config.schema.json from the
config model, so neither reference drifts (tests/test_cli.py and tests/test_config.py check
both against what the code says now)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlxtune.config import json_schema

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


if __name__ == "__main__":
    main()
