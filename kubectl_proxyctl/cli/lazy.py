"""A click Group whose subcommands are imported only when invoked.

The short help of each subcommand is kept here as static text, so `--help` and shell
completion of command names import no subcommand module (and so nothing heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    def __init__(
        self, *args: Any, lazy_subcommands: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # name -> ("module:attr", "short help")
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_subcommands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module, attr = self.lazy_subcommands[cmd_name][0].split(":")
            cmd = getattr(importlib.import_module(module), attr)
            if not isinstance(cmd, click.Command):
                raise TypeError(f"{module}:{attr} is not a click command")
            return cmd
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, self.lazy_subcommands[n][1]) for n in self.lazy_subcommands]
        rows += [(n, c.get_short_help_str()) for n, c in self.commands.items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def materialize(self, ctx: click.Context) -> None:
        """Import every lazy subcommand into `self.commands` (man pages, docs)."""
        for name in list(self.lazy_subcommands):
            cmd = self.get_command(ctx, name)
            if cmd is not None:
                self.add_command(cmd, name)
        self.lazy_subcommands = {}
