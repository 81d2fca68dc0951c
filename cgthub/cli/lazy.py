"""Sub-commands imported only when a command line names them (click's LazyGroup pattern, on Typer).

A `cgthub` call pays for the modules of the command it runs: `cgthub --help` imports no database
code, `cgthub orders list` neither the API server, the HL7 listener nor the mapping compiler. A group
lists its commands from their `Listed` entries, so `--help` imports none of them; naming a command
imports its module and builds it as `app.add_typer` / `app.command` would have (same help, options,
exit codes: tests/test_cli_start.py compares every entry with its loaded command)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info, get_group_from_info
from typer.models import TyperInfo


@dataclass(frozen=True)
class Listed:
    """A command by name: where it lives and the help its group lists it with.

    `target` is "module:attribute", a Typer (a group, built as `add_typer` would) or a function (one
    command, built as `app.command(name)` would). `more` are commands another module adds to the
    group (the signed `orders release-hold` lives with the other decisions)."""

    name: str
    target: str
    help: str
    more: tuple[Listed, ...] = ()


class _Unloaded(TyperCommand):
    """Stands in for a command until it is named: its name and help, nothing imported."""

    def __init__(self, listed: Listed) -> None:
        super().__init__(name=listed.name, help=listed.help)
        self.listed = listed


class _Commands(MutableMapping[str, _click.Command]):
    """A group's commands by name, in order; looking one up imports it (as `.get`, `.items()` do)."""

    def __init__(self, group: LazyGroup, commands: MutableMapping[str, _click.Command]) -> None:
        self._group = group
        self._commands = dict(commands)

    def __getitem__(self, name: str) -> _click.Command:
        command = self._commands[name]
        if isinstance(command, _Unloaded):
            command = self._commands[name] = self._group.load(command.listed)
        return command

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._commands[name] = command

    def __delitem__(self, name: str) -> None:
        del self._commands[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._commands)

    def __len__(self) -> int:
        return len(self._commands)

    def peek(self, name: str) -> _click.Command | None:
        """The command, or its stand-in if not imported yet: enough to list it."""
        return self._commands.get(name)


class LazyGroup(TyperGroup):
    """A Typer group whose deferred commands are imported on first use."""

    # Typer's default, which the root `cgthub` Typer keeps (it turns pretty exceptions off).
    pretty_exceptions_short = True
    _listing = False

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = self._deferred = _Commands(self, self.commands)

    def defer(self, listed: Iterable[Listed]) -> None:
        for entry in listed:
            self.commands[entry.name] = _Unloaded(entry)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(self.commands)  # names only (Typer's own reads every command, importing each)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if self._listing:
            return self._deferred.peek(cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Typer's listing, from the entries' help: `--help` imports no command's module."""
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

    def load(self, listed: Listed) -> _click.Command:
        module_name, attribute = listed.target.split(":")
        target = getattr(importlib.import_module(module_name), attribute)
        if isinstance(target, typer.Typer):
            group = get_group_from_info(
                TyperInfo(target, name=listed.name, cls=LazyGroup),
                pretty_exceptions_short=self.pretty_exceptions_short,
                rich_markup_mode=self.rich_markup_mode,
                suggest_commands=self.suggest_commands,
            )
            assert isinstance(group, LazyGroup)
            group.defer(listed.more)
            return group
        holder = typer.Typer()
        holder.command(listed.name)(target)
        return get_command_from_info(
            holder.registered_commands[0],
            pretty_exceptions_short=self.pretty_exceptions_short,
            rich_markup_mode=self.rich_markup_mode,
        )
