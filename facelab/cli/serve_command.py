"""`facelab serve`, its options derived from :class:`ServeConfig` and :class:`ServerOptions`
(facelab/cli/_config.py: name, type, default and help from the field), with the flag names
the CLI has always had (registered lazily by facelab/cli/serve.py).

Only the options given reach ServeConfig: a setting not given on the command line comes
from its ``FACELAB_<SETTING>`` environment variable (pydantic-settings), else its default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from facelab.bundle import bundle_dir_of
from facelab.cli._config import Flag, options
from facelab.predict import BACKENDS
from facelab.serve.app import serve
from facelab.serve.logs import LEVELS
from facelab.serve.settings import ServeConfig, ServerOptions

#: ServeConfig fields whose flag is not ``--field-name`` (the CLI's names), or that are choices.
SERVE_FLAGS = {
    "backend": Flag(choices=BACKENDS),
    "request_timeout": Flag(("--timeout", "--request-timeout")),
    "cors_origins": Flag(("--cors-origin",), multiple=True, metavar="ORIGIN"),
    "max_in_flight": Flag(("--max-connections", "--max-in-flight")),
    "keep_alive_timeout": Flag(("--keep-alive", "--keep-alive-timeout")),
}
#: ServeConfig fields with no flag: the runs are serve's argument; the key's digest is
#: what --workers processes get, never typed by a user.
SERVE_EXCLUDED = ("runs", "api_key_digest")


@options(ServeConfig, into="settings", exclude=SERVE_EXCLUDED, flags=SERVE_FLAGS, only_given=True)
@options(ServerOptions, into="server", flags={"log_level": Flag(choices=LEVELS)})
def serve_cmd(runs: list[Path] = typer.Argument(..., help="One or more run folders (each becomes a model)."),
              settings: Any = None, server: Any = None) -> None:
    """Serve RUNS over HTTP: JSON API, live-video WebSocket and a web page at /.

    Every setting not given comes from the environment variable FACELAB_<SETTING>
    (FACELAB_MAX_BATCH=16, FACELAB_API_KEY=...), else its default."""
    for run in runs:
        bundle_dir_of(run)  # fail before the server starts, with a clear message
    config = ServeConfig(runs=tuple(str(r) for r in runs), **settings)
    process = ServerOptions(**server)
    typer.echo(f"facelab serve: http://{process.host}:{process.port}/  (API docs: /docs"
               f"{', API key required' if config.key() else ''})")
    serve(config, process)
