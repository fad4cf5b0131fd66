"""`mlxtune --help` / `mlxtune VERB --help` print from src/mlxtune/cli_help.json without importing
Typer: the cache must be exactly what the live app prints, and anything else goes to the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxtune import console

APP_AS_MLXTUNE = "import sys; sys.argv[0] = 'mlxtune'; from mlxtune.cli import main; main()"
CONSOLE = "import sys; sys.argv[0] = 'mlxtune'; from mlxtune.console import main; main()"


def _run(code: str, *args: str, columns: str = "80") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": columns}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )


def test_cache_is_what_the_live_app_renders() -> None:
    cached = json.loads(console.HELP_CACHE.read_text())
    assert cached == console.render_help_texts(), "stale: run `make docs`"
    assert {"", "train", "runs list", "config show"} <= set(cached)


@pytest.mark.parametrize("args", [[], ["train"], ["runs", "list"]])
def test_cached_text_equals_the_app_in_a_real_process(args: list[str]) -> None:
    live = _run(APP_AS_MLXTUNE, *args, "--help")
    fast = _run(CONSOLE, *args, "--help")
    assert live.returncode == fast.returncode == 0
    assert fast.stdout == live.stdout and "Usage: mlxtune" in fast.stdout


def test_help_from_the_cache_imports_no_typer() -> None:
    listed = "sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click', 'mlxtune'))"
    probe = CONSOLE.replace("main()", f"main(); print({listed}, file=sys.stderr)")
    res = _run(probe, "train", "--help")
    assert res.returncode == 0
    assert res.stderr.strip() == "['mlxtune', 'mlxtune.console', 'mlxtune.runtime']"


def test_only_exact_help_requests_at_full_width_use_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    assert console.cached_help(["mlxtune", "train", "--help"]) is not None
    assert console.cached_help(["/usr/bin/mlxtune", "--help"]) is not None
    assert console.cached_help(["mlxtune", "train"]) is None
    assert console.cached_help(["mlxtune", "trian", "--help"]) is None  # the app suggests
    assert console.cached_help(["mlxtune", "train", "--iters", "3", "--help"]) is None
    assert console.cached_help(["python", "train", "--help"]) is None  # another program name
    monkeypatch.setenv("COLUMNS", "60")  # Click wraps narrower: the app renders it
    assert console.cached_help(["mlxtune", "train", "--help"]) is None


def test_a_narrow_terminal_and_a_typo_still_reach_the_app() -> None:
    narrow = _run(CONSOLE, "train", "--help", columns="60")
    assert (
        narrow.returncode == 0
        and narrow.stdout == _run(APP_AS_MLXTUNE, "train", "--help", columns="60").stdout
    )
    typo = _run(CONSOLE, "trian", "--help")
    assert typo.returncode == 2 and "Did you mean 'train'?" in typo.stderr


def test_missing_cache_falls_back_to_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "HELP_CACHE", tmp_path / "absent.json")
    monkeypatch.setenv("COLUMNS", "100")
    assert console.cached_help(["mlxtune", "--help"]) is None
