"""The `facelab` command line. It maps commands onto the API functions and holds no logic.

Each stage registers its commands from its own module (``facelab/cli/<stage>.py``, a
``register(app)`` function), so the CLI grows with the pipeline without one big file.
"""
from __future__ import annotations

import importlib
import logging
import os

import typer

from facelab._progress import stderr_is_terminal
from facelab.cli._lazy import LazyGroup

app = typer.Typer(
    name="facelab",
    help="Folders of face photos in; trained, explained and served face classifiers out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: shows help text as written ("[default: 0.2]" is not read as rich markup)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=LazyGroup,
)

# Stage modules in pipeline order; each defines register(app).
_STAGES = ("prepare", "inspect", "collect", "train", "evaluate", "explain", "export",
           "predict", "serve", "people")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, os.environ.get("FACELAB_LOG", "INFO")),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not stderr_is_terminal():
        # In a log file every redraw of a progress bar is kept: redraw every 30 s at most
        # (prepare and collect log a line per tenth of the work instead of a bar).
        os.environ.setdefault("TQDM_MININTERVAL", "30")


for _stage in _STAGES:
    importlib.import_module(f"facelab.cli.{_stage}").register(app)


def main() -> None:
    from facelab.cli._errors import run_app

    run_app(app)
