from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import cli_env, run_cli
from mlxtune import __version__
from mlxtune.cli import VERBS, app

runner = CliRunner()
LIFECYCLE = ["prepare", "validate-format", "train", "evaluate", "serve", "bench"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    # Names from the Commands section's first column: the root description names verbs too.
    commands = result.output.split("\nCommands:\n", 1)[1]
    listed = set(re.findall(r"^  ([a-z][a-z-]+) ", commands, flags=re.MULTILINE))
    assert {*LIFECYCLE, "config", "doctor", "tiny-model", "report", "export", "runs"} <= listed


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_lifecycle_commands_take_config_and_set() -> None:
    for name in LIFECYCLE:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert f"Usage: mlxtune {name} [OPTIONS]" in result.output, name
        assert "--config" in result.output and "--set" in result.output, name


def test_startup_imports_nothing_heavy() -> None:
    code = (
        "import sys, json\n"
        "from mlxtune.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['config', 'show']):\n"
        "    assert r.invoke(app, args).exit_code == 0, args\n"
        "heavy = ['mlx', 'mlx.core', 'mlx_lm', 'mlx_vlm', 'datasets', 'transformers', 'torch',\n"
        "         'mlx_embeddings']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_help_imports_no_markdown_rich_or_openblas() -> None:
    """`--help` of the app and of every command (walked from the app) stays cheap: no Rich
    console, no markdown parser (Typer's rich help), no ctypes/OpenBLAS load, no mlx, no
    pydantic (Typer's parameter coercion builds pydantic TypeAdapters; an unset flag must not
    need one), no yaml. The root help imports no verb's module either (cli/lazy.py)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from mlxtune.cli import app\n"
        "import typer.main\n"
        "def walk(cmd, path):\n"
        "    yield path\n"
        "    for name, sub in getattr(cmd, 'commands', {}).items():\n"
        "        yield from walk(sub, [*path, name])\n"
        "def loaded(args):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        app([*args, '--help'], prog_name='mlxtune')\n"
        "    return sorted(sys.modules)\n"
        "root = loaded([])\n"
        "paths = list(walk(typer.main.get_command(app), []))[1:]\n"
        "for path in paths:\n"
        "    loaded(path)\n"
        "print(json.dumps({'root': root, 'all': sorted(sys.modules), 'n': len(paths)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["n"] >= 14  # every verb and group command was asked for its help

    def heavy(modules: list[str], roots: set[str]) -> list[str]:
        return [m for m in modules if m.split(".")[0] in roots or m in roots]

    always = {"markdown_it", "rich", "typer.rich_utils", "pygments", "ctypes", "mlx", "mlx_lm"}
    always |= {"datasets", "transformers", "yaml", "jinja2", "pydantic", "pydantic_core"}
    assert heavy(seen["all"], always) == []
    verb_modules = {f"mlxtune.cli.{v.target.split(':')[0].rsplit('.', 1)[1]}" for v in VERBS}
    assert sorted(verb_modules & set(seen["root"])) == []
    assert verb_modules <= set(seen["all"])  # the walk did import them


def test_known_error_is_one_line_without_traceback(tmp_path) -> None:
    result = run_cli("config", "show", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "config file not found" in result.stderr and "Traceback" not in result.stderr


def test_doctor_json_reports_blas_and_speed() -> None:
    result = run_cli("doctor", "--json")
    report = json.loads(result.stdout)
    assert report["ok"] == all(c["status"] != "fail" for c in report["checks"])
    assert result.returncode == (0 if report["ok"] else 1), result.stderr
    names = {c["name"] for c in report["checks"]}
    assert {"python", "mlx", "mlx-lm", "device", "blas", "memory", "hub cache"} <= names
    assert report["facts"]["matmul_gflops"] > 0
    assert report["facts"]["offline"] is True  # the autouse fixture sets HF_HUB_OFFLINE


def test_cli_reference_is_current(tmp_path) -> None:
    """docs/cli.md is what Typer's docs command makes of the app now (`make docs` rewrites it)."""
    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("gen_cli_docs", repo / "scripts/gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = tmp_path / "cli.md"
    subprocess.run(
        [sys.executable, *gen.CLI_DOCS, str(fresh)], env=cli_env(), check=True, capture_output=True
    )
    shipped = (repo / "docs" / "cli.md").read_text()
    assert shipped == fresh.read_text(), "run `make docs` to regenerate docs/cli.md"
    assert "## `mlxtune runs compare`" in shipped  # nested groups are documented too
