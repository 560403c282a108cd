"""Turn expected errors into one clear line on stderr (no traceback).

Exit codes: 2 bad input (any :class:`facelab.errors.FacelabError`: a file, a path, an
option, a missing package), 3 disk full (free space and run the same command again: it
resumes), 4 a worker failed on a photo (the photo and the reason are on the line).
Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import sys

import typer

from facelab._io import DiskFullError, is_disk_full
from facelab.errors import FacelabError

EXIT_BAD_INPUT = 2
EXIT_DISK_FULL = 3
EXIT_WORKER_FAILED = 4


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'bad input', not 'bug': shown without a traceback."""
    return (FacelabError,)


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
        code = getattr(exc, "exit_code", None)  # click's, or the copy typer ships (typer._click)
        show = getattr(exc, "show", None)
        if isinstance(code, int) and callable(show):
            show()  # a usage error: "No such option: --bogus"
            sys.exit(code)
        if isinstance(code, int) and type(exc).__name__ == "Exit":
            sys.exit(code)
        if is_disk_full(exc):
            message = exc if isinstance(exc, DiskFullError) else DiskFullError(getattr(exc, "filename", None) or "?")
            typer.echo(f"facelab: error: {message}", err=True)
            sys.exit(EXIT_DISK_FULL)
        from facelab.prepare import WorkerError

        if isinstance(exc, WorkerError):
            typer.echo(f"facelab: error: {exc}", err=True)
            sys.exit(EXIT_WORKER_FAILED)
        if isinstance(exc, user_error_types()):
            typer.echo(f"facelab: error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        raise
