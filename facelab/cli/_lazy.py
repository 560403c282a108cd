"""Commands whose options are built on first use.

`facelab train`'s options come from TrainConfig, whose module imports torch (2-3 s). The
root group lists such a command with a one-line summary and builds its real options only
when the command is resolved (run, or asked for its help), so `facelab predict` or
`facelab -h` start without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

#: {command: "module:function"} of the lazy commands.
LAZY: dict[str, str] = {}


class LazyGroup(TyperGroup):
    """The root group: swaps a lazy command's placeholder for the real command when resolved."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in LAZY and self.commands.get(args[0]) is not None:
            self.commands[args[0]] = load_command(args[0])
        return super().resolve_command(ctx, args)


def load_command(name: str) -> Any:
    """The click command of lazy command ``name`` (its module is imported now)."""
    module, _, function = LAZY[name].partition(":")
    sub = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    sub.command(name)(getattr(importlib.import_module(module), function))
    return typer.main.get_command(sub)


def lazy_command(app: typer.Typer, name: str, target: str, summary: str) -> None:
    """Add command ``name``, implemented by ``target`` ("module:function"); ``facelab -h``
    lists it with ``summary``, its docstring's first line (tests/test_cli_help.py checks it)."""
    LAZY[name] = target

    def placeholder() -> None:  # pragma: no cover - replaced before it can run
        raise RuntimeError(f"lazy command {name} was not loaded")

    app.command(name, help=summary)(placeholder)
