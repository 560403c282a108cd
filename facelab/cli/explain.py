"""CLI commands of the explain stage (see facelab/explain.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("explain")(explain_cmd)


def explain_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `facelab train`."),
    images: list[Path] = typer.Argument(..., help="Photos (or folders of photos) to explain."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default RUN/explain)."),
    method: str = typer.Option("gradcam", help="gradcam, hirescam or gradcam++."),
    target: Optional[str] = typer.Option(None, help="Label to explain (default: the predicted one)."),
    layer: Optional[str] = typer.Option(None, help="Module name to explain at (default: the last map at least 6 cells across)."),
    aligned: bool = typer.Option(False, "--aligned", help="The photos are already aligned face crops."),
    feature_maps: bool = typer.Option(True, "--feature-maps/--no-feature-maps",
                                      help="Also draw feature maps and first-layer filters."),
    blocks: int = typer.Option(3, help="Convolution blocks in the feature-map picture."),
) -> None:
    """Heat maps of what the network looks at (crop and original photo), feature maps and filters."""
    from facelab.data import is_image_file
    from facelab.explain import ExplainConfig, explain

    files: list[Path] = []
    for p in images:
        files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)) if p.is_dir() else [p]
    config = ExplainConfig(method=method, target=target, layer=layer, aligned=aligned,
                           feature_maps=feature_maps, blocks=blocks)
    result = explain(run, files, out, config)
    for e in result.items:
        typer.echo(f"{e.path}: {e.label} p={e.prob:.3f}")
    typer.echo(f"explained {len(result.items)} of {len(files)} photo(s); report: {result.files['html']}")
