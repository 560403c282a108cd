"""CLI command of the serve stage (see facelab/serve/).

Its options are the fields of ServeConfig (what each server process serves) and of
ServerOptions (where and how the processes run), built in facelab/cli/serve_command.py,
which is loaded only when `facelab serve` runs or shows its help (facelab/cli/_lazy.py):
the settings module imports pydantic-settings and uvicorn.
"""
from __future__ import annotations

import typer

from facelab.cli._lazy import lazy_command

SUMMARY = "Serve RUNS over HTTP: JSON API, live-video WebSocket and a web page at /."
"""The first line of serve_cmd's docstring (tests/test_cli_help.py checks they agree)."""


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    lazy_command(app, "serve", "facelab.cli.serve_command:serve_cmd", SUMMARY)
