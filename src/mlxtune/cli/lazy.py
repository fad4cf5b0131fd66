"""Commands built when named: `mlxtune --help` lists every verb without importing one.

The root group knows each verb by name, where its Typer function (or sub-app) lives and its
one-line summary; it imports the verb's module and builds its click command with Typer's own
builders only when that verb is run, asked for its help, or walked (docs, completion). A
sub-app's group (`runs`, `config`) builds only the subcommand named, the same way. The verb
modules stay the single source of each command's flags and help; the root's summaries are
kept equal to what the built commands say by tests/test_cli_lazy.py.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.main import get_command_from_info, get_command_name, get_group_from_info
from typer.models import CommandInfo, TyperInfo

# Typer's default, which the app keeps; it only names a traceback guard in the callbacks.
_PRETTY_EXCEPTIONS_SHORT = True


@dataclass(frozen=True)
class Verb:
    """A verb of the root group: `target` is "module:attribute", a Typer command function or
    a `typer.Typer` sub-app; `summary` is its help's first paragraph, as the root help lists it."""

    name: str
    target: str
    summary: str


class _Commands(MutableMapping[str, Any]):
    """name -> click command, each built on first lookup. TyperGroup keeps its commands in
    this mapping (.commands), so its lookups, typo suggestions and walks work unchanged."""

    def __init__(self, pending: dict[str, tuple[Callable[[], Any], Any]], built: dict[str, Any]):
        self._pending = pending  # name -> (build, stub: a command with just the listed help)
        self._built = dict(built)
        self._order = [*pending, *(name for name in built if name not in pending)]

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            build, _stub = self._pending[name]  # KeyError: no such command
            self._built[name] = build()  # a verb that fails to import stays pending
            del self._pending[name]
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._order:
            self._order.append(name)
        self._pending.pop(name, None)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._order:
            raise KeyError(name)
        self._order.remove(name)
        self._pending.pop(name, None)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._order

    def listed(self, name: str) -> Any:
        """What the group's help lists for `name`: the built command, or its stub."""
        return self._built[name] if name in self._built else self._pending[name][1]


class LazyGroup(TyperGroup):
    """A TyperGroup whose commands are built on first lookup and whose help lists them
    without building them.

    It also reads its unset boolean flags (--help, --install-completion) as False, not None:
    Typer coerces a None through a pydantic TypeAdapter it builds on first use, which put
    pydantic (~0.1 s) on every `mlxtune VERB --help`. A flag's value is a bool anyway."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands({}, dict(self.commands))

    def add_lazy(self, pending: dict[str, tuple[Callable[[], Any], Any]]) -> None:
        """Commands to build when named, listed before the ones already built."""
        built = {name: self.commands[name] for name in self.commands}
        self.commands = _Commands(pending, built)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if not isinstance(param, TyperOption) or not param.is_bool_flag:
                continue
            if param.default is None and param.type_descriptor.annotation is bool:
                param.default = False
        return params

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # TyperGroup's reads .items(), which would build them all

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """TyperGroup's command list, from stubs for the commands not built."""
        assert isinstance(self.commands, _Commands)
        rows = [(name, self.commands.listed(name)) for name in self.list_commands(ctx)]
        rows = [(name, command) for name, command in rows if not command.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


class VerbGroup(LazyGroup):
    """The root group: `verbs` (set by a subclass) in the order the help lists them."""

    verbs: ClassVar[tuple[Verb, ...]] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.add_lazy(
            {
                v.name: (partial(self.load, v), TyperCommand(v.name, help=v.summary))
                for v in self.verbs
            }
        )

    def load(self, verb: Verb) -> Any:
        """The verb's click command, as `app.command(name)` / `app.add_typer` would build it."""
        module_name, _, attribute = verb.target.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        if isinstance(target, typer.Typer):
            return self._sub_group(target, verb.name)
        holder = typer.Typer(rich_markup_mode=self.rich_markup_mode)
        holder.command(verb.name)(target)
        return self._command(holder.registered_commands[0])

    def _command(self, info: CommandInfo) -> Any:
        info = copy.copy(info)
        info.callback = _annotations_evaluated(info.callback)
        return get_command_from_info(
            info,
            pretty_exceptions_short=_PRETTY_EXCEPTIONS_SHORT,
            rich_markup_mode=self.rich_markup_mode,
        )

    def _sub_group(self, sub_app: typer.Typer, name: str) -> Any:
        """The sub-app's group, its own commands built when named (a sub-app that names its
        own group class is built as Typer builds it)."""
        own_cls = sub_app.info.cls
        lazy = not (isinstance(own_cls, type) and issubclass(own_cls, TyperGroup))
        shell = copy.copy(sub_app)
        if lazy:
            shell.registered_commands = []
        group = get_group_from_info(
            TyperInfo(shell, name=name, cls=LazyGroup if lazy else own_cls),
            pretty_exceptions_short=_PRETTY_EXCEPTIONS_SHORT,
            rich_markup_mode=self.rich_markup_mode,
            suggest_commands=self.suggest_commands,
        )
        if lazy:
            assert isinstance(group, LazyGroup)
            group.add_lazy(
                {
                    _name(i): (partial(self._command, i), _stub(i))
                    for i in sub_app.registered_commands
                }
            )
        return group


def _annotations_evaluated(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """`fn` with its string annotations (`from __future__ import annotations`) evaluated once:
    Typer evaluates each of them four times while building a command (inspect.signature with
    eval_str and get_type_hints, twice), ~40% of building `train`'s. A `__signature__` is what
    inspect.signature returns as is; the call goes to `fn` unchanged."""
    if fn is None:
        return None
    signature = inspect.signature(fn, eval_str=True)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    call.__signature__ = signature  # type: ignore[attr-defined]
    evaluated = {n: p.annotation for n, p in signature.parameters.items()}
    evaluated["return"] = signature.return_annotation
    call.__annotations__ = {n: a for n, a in evaluated.items() if a is not signature.empty}
    return call


def _name(info: CommandInfo) -> str:
    assert info.callback is not None
    return info.name or get_command_name(info.callback.__name__)


def _stub(info: CommandInfo) -> TyperCommand:
    """A command with just what a group's help lists of it (help as Typer resolves it)."""
    help = inspect.cleandoc(info.help) if info.help is not None else inspect.getdoc(info.callback)
    return TyperCommand(
        _name(info),
        help=help,
        short_help=info.short_help,
        hidden=info.hidden,
        deprecated=info.deprecated,
    )
