"""Turn expected user errors into one clear line on stderr and exit code 2 (no traceback)."""
from __future__ import annotations

import sys

import typer

from facelab.data import DataError


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'bad input', not 'bug': shown without a traceback."""
    return (DataError, FileNotFoundError, ImportError, ValueError)


def run_app(app: typer.Typer) -> None:
    try:
        # Without standalone mode click returns a command's `typer.Exit(code)` instead
        # of exiting with it; pass it on so `--strict` style exit codes reach the shell.
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and not isinstance(rc, bool):
            sys.exit(rc)
    except SystemExit:
        raise
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, user_error_types()):
            typer.echo(f"facelab: error: {exc}", err=True)
            sys.exit(2)
        raise
