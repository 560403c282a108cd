"""CLI commands of the prepare stage (see facelab/prepare.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("prepare")(prepare_cmd)
    app.command("detectors")(detectors_cmd)


def prepare_cmd(
    src: Path = typer.Argument(..., help="Photos: a folder per class, a CelebA root, or a CSV."),
    out: Path = typer.Argument(..., help="Output folder (same layout and labels, aligned crops)."),
    detector: str = typer.Option("yuface", help="Face detector (see `facelab detectors`)."),
    detector_option: list[str] = typer.Option([], "--detector-option", "-D",
                                              help="Detector option KEY=VALUE, e.g. -D min_neighbors=5."),
    size: int = typer.Option(224, help="Side of the square crop in pixels."),
    template: str = typer.Option("celeba", help="Alignment template: celeba (keeps hair, hats) or tight."),
    margin: float = typer.Option(0.0, help="Extra context on each side, fraction of the template frame."),
    multi_face: str = typer.Option("largest", help="Several faces: largest, all or skip."),
    light: str = typer.Option("none", help="Light balancing: none or clahe."),
    background: str = typer.Option("keep", help="Outside the face: keep, blur or grey."),
    detect_max_side: int = typer.Option(640, help="Downscale photos to this longest side for detection."),
    fast_side: int = typer.Option(160, help="First try detection at this longest side (0 = off)."),
    min_face: int = typer.Option(24, help="Ignore faces narrower than this (pixels)."),
    fmt: str = typer.Option("jpg", "--format", help="Crop format: jpg or png."),
    workers: int = typer.Option(2, help="Parallel worker processes."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache folder (default $FACELAB_CACHE or ~/.cache/facelab)."),
    no_html: bool = typer.Option(False, "--no-html", help="Skip the HTML report."),
) -> None:
    """Detect, align and crop the faces of SRC into OUT, with a report of every reject."""
    from facelab.prepare import PrepareConfig, prepare

    config = PrepareConfig(detector=detector, detector_options=_parse_options(detector_option), size=size,
                           template=template, margin=margin, multi_face=multi_face, light=light,
                           background=background, detect_max_side=detect_max_side, fast_side=fast_side,
                           min_face=min_face,
                           format=fmt)
    report = prepare(src, out, config, workers=workers, cache_dir=cache_dir, report_html=not no_html)
    typer.echo(report.summary())
    typer.echo(f"output:  {report.out}")
    typer.echo(f"reasons: {report.csv_path}")
    if report.grid_path:
        typer.echo(f"grid:    {report.grid_path}")
    if report.html_path:
        typer.echo(f"report:  {report.html_path}")


def detectors_cmd() -> None:
    """List the face detectors `facelab prepare --detector` accepts."""
    from facelab.detect import describe_detectors

    for name, text in describe_detectors().items():
        typer.echo(f"{name:10s} {text}")


def _parse_options(items: list[str]) -> dict:
    """["min_neighbors=5", "min_size=[40,40]"] -> {"min_neighbors": 5, "min_size": [40, 40]}."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--detector-option")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options
