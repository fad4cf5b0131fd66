"""Verbs built when named (cli/lazy.py): the help a group prints from its registered summaries
is the help its built commands give, and lookups that walk the names still work."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer._click import Context
from typer.core import TyperGroup
from typer.testing import CliRunner

from mlxtune.cli import VERBS, app

runner = CliRunner()


def _fresh(path: list[str]) -> Any:
    """The group at `path` in a newly built app, its own commands not built yet."""
    group = typer.main.get_command(app)
    for name in path:
        group = group.commands[name]
    return group


def _commands_section(group: Any, width: int, *, lister: Any) -> str:
    ctx = Context(group, info_name="mlxtune", terminal_width=width, max_content_width=width)
    formatter = ctx.make_formatter()
    lister(group, ctx, formatter)
    return str(formatter.getvalue())


def test_root_summaries_are_the_verbs_help() -> None:
    root = _fresh([])
    for verb in VERBS:
        first_paragraph = (root.commands[verb.name].help or "").split("\n\n")[0]
        assert verb.summary == " ".join(first_paragraph.split()), verb.name
    assert list(root.commands) == [v.name for v in VERBS]


@pytest.mark.parametrize("path", [[], ["runs"], ["config"]])
@pytest.mark.parametrize("width", [40, 80, 160])
def test_group_help_lists_what_built_commands_say(path: list[str], width: int) -> None:
    group = _fresh(path)
    listed = _commands_section(group, width, lister=type(group).format_commands)
    for name in list(group.commands):
        group.commands[name]  # build it: Typer's own listing reads the built commands
    typer_listing = _commands_section(group, width, lister=TyperGroup.format_commands)
    assert "Commands:" in listed
    assert listed == typer_listing


@pytest.mark.parametrize(
    ("args", "suggestion"), [(["trian"], "'train'"), (["runs", "lst"], "'list'")]
)
def test_unknown_verb_still_suggests_the_near_one(args: list[str], suggestion: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"Did you mean {suggestion}?" in result.output
