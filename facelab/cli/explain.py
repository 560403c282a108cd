"""CLI commands of the explain stage (see facelab/explain/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from facelab.cli._config import Flag, options
from facelab.explain import CAM_METHODS, ExplainConfig


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("explain")(explain_cmd)


@options(ExplainConfig, flags={"method": Flag(choices=CAM_METHODS)})
def explain_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `facelab train`."),
    images: list[Path] = typer.Argument(..., help="Photos (or folders of photos) to explain."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default RUN/explain)."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
) -> None:
    """Heat maps of what the network looks at (crop and original photo), feature maps and filters."""
    from facelab.data import is_image_file
    from facelab.explain import explain

    files: list[Path] = []
    for p in images:
        files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)) if p.is_dir() else [p]
    result = explain(run, files, out, ExplainConfig(**config))
    for e in result.items:
        typer.echo(f"{e.path}: {e.label} p={e.prob:.3f}")
    typer.echo(f"explained {len(result.items)} of {len(files)} photo(s); report: {result.files['html']}")
