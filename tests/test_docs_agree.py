"""The docs promise only what exists: every `mlxtune ...` command line and every `section.key`
config name quoted in README.md and docs/*.md is checked against the live CLI and config model.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

from mlxtune.cli import app
from mlxtune.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
FILE_SUFFIXES = {"py", "md", "json", "jsonl", "yaml", "yml", "html", "csv", "safetensors", "db"}
STOP = {"|", "||", "&&", ";", "#", ">", "2>&1", "\\"}


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code text) for every fenced block line and inline code span."""
    out: list[tuple[int, str]] = []
    for m in CODE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group(1) is not None:
            for i, chunk in enumerate(m.group(1).splitlines(), start=1):
                out.append((line + i, chunk))
        else:
            out.append((line, m.group(2)))
    return out


def _command_lines(text: str) -> list[tuple[int, list[str]]]:
    found = []
    for line, chunk in _snippets(text):
        for piece in re.split(r"\s*(?:&&|\|\||;|\|)\s*", chunk):
            piece = piece.strip().removeprefix("$ ")
            if not piece.startswith("mlxtune "):
                continue
            try:
                words = shlex.split(piece, comments=True)
            except ValueError:
                words = piece.split()
            found.append((line, words[1:]))
    return found


def _check_command(root: Any, words: list[str]) -> str | None:
    """Why `mlxtune WORDS` would be refused, or None. (Typer 0.29 vendors click: duck-typed.)"""
    cmd = root
    params = list(root.params)
    for i, word in enumerate(words):
        if word in STOP or word.startswith("#"):
            break
        if hasattr(cmd, "commands") and not word.startswith("-"):
            sub = cmd.commands.get(word)
            if sub is None:
                if word.isupper() or "…" in word or word.startswith("<"):
                    return None  # a placeholder such as `mlxtune runs ACTION`
                return (
                    f"no command {' '.join(w for w in words[: i + 1] if not w.startswith('-'))!r}"
                )
            cmd = sub
            params = [*params, *sub.params]
            continue
        if word.startswith("-") and word not in ("-", "--"):
            flag = word.split("=", 1)[0]
            if flag in ("--help", "-h"):
                continue
            names = {n for p in params for n in (*p.opts, *p.secondary_opts)}
            if flag not in names and not flag.startswith("--[") and "…" not in flag:
                return f"{cmd.name}: no option {flag!r}"
    return None


def _config_names(text: str) -> list[tuple[int, str]]:
    sections = set(Config.model_fields)
    names = []
    for line, chunk in _snippets(text):
        for m in re.finditer(r"(?<![\w./-])([a-z_]+(?:\.[a-z_0-9]+)+)(?=[\s=:,)\]}]|$)", chunk):
            name = m.group(1)
            if name.split(".")[0] in sections and name.rsplit(".", 1)[1] not in FILE_SUFFIXES:
                names.append((line, name))
    return names


def _resolve(model: type[BaseModel], parts: list[str]) -> bool:
    current: Any = model
    for part in parts:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return True  # a dict or list value: its keys are the user's
        field = current.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return True


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_and_flags_exist(doc: Path) -> None:
    root = typer.main.get_command(app)
    problems = []
    for line, words in _command_lines(doc.read_text()):
        why = _check_command(root, words)
        if why:
            problems.append(f"{doc.name}:{line}: `mlxtune {' '.join(words)}`: {why}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "design.md"], ids=lambda p: p.name)
def test_documented_config_keys_exist(doc: Path) -> None:
    problems = [
        f"{doc.name}:{line}: `{name}` is not a config key"
        for line, name in _config_names(doc.read_text())
        if not _resolve(Config, name.split("."))
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_made_up_flag_and_key() -> None:
    root = typer.main.get_command(app)
    assert _check_command(root, ["train", "-c", "x.yaml", "--iters", "3"]) is None
    assert "--no-such-flag" in str(_check_command(root, ["train", "--no-such-flag"]))
    assert "no command" in str(_check_command(root, ["trian"]))
    assert _resolve(Config, ["train", "learning_rate"])
    assert not _resolve(Config, ["train", "learning_rat"])
