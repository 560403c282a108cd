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
    detector: Optional[str] = typer.Option(None, help="Face detector (see `facelab detectors`; default yuface)."),
    detector_option: list[str] = typer.Option([], "--detector-option", "-D",
                                              help="Detector option KEY=VALUE, e.g. -D min_neighbors=5."),
    size: Optional[int] = typer.Option(None, help="Side of the square crop in pixels [224]."),
    template: Optional[str] = typer.Option(None, help="Alignment template: celeba (keeps hair, hats) or tight."),
    margin: Optional[float] = typer.Option(None, help="Extra context per side, fraction of the template [0]."),
    multi_face: Optional[str] = typer.Option(None, help="Several faces: largest (default), all or skip."),
    light: Optional[str] = typer.Option(None, help="Light balancing: none (default) or clahe."),
    background: Optional[str] = typer.Option(None, help="Outside the face: keep (default), blur or grey."),
    detect_max_side: Optional[int] = typer.Option(None, help="Longest side photos are shrunk to for detection [640]."),
    fast_side: Optional[int] = typer.Option(None, help="First detection try at this longest side, 0 = off [128]."),
    min_face: Optional[int] = typer.Option(None, help="Ignore faces narrower than this many pixels [24]."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Crop format: jpg (default) or png."),
    workers: int = typer.Option(2, help="Parallel workers."),
    processes: Optional[bool] = typer.Option(None, "--processes/--threads",
                                             help="Worker processes or threads [processes from 200 photos on]."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache folder (default $FACELAB_CACHE or ~/.cache/facelab)."),
    no_html: bool = typer.Option(False, "--no-html", help="Skip the HTML report."),
    shard: Optional[str] = typer.Option(None, help="K/N: prepare only slice K of N into the cache (N "
                                                    "processes or machines in parallel); then run the same "
                                                    "command without --shard to write OUT from the cache."),
) -> None:
    """Detect, align and crop the faces of SRC into OUT, with a report of every reject."""
    from facelab.prepare import PrepareConfig, parse_shard, prepare, prepare_shard

    given = dict(detector=detector, size=size, template=template, margin=margin, multi_face=multi_face,
                 light=light, background=background, detect_max_side=detect_max_side, fast_side=fast_side,
                 min_face=min_face, format=fmt, detector_options=_parse_options(detector_option) or None)
    config = PrepareConfig.from_dict({k: v for k, v in given.items() if v is not None})
    if shard is not None:
        try:
            k, n = parse_shard(shard)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--shard") from None
        part = prepare_shard(src, k, n, config, workers=workers, cache_dir=cache_dir, processes=processes)
        typer.echo(part.summary())
        typer.echo(f"next:    when every shard is done, `facelab prepare {src} {out}` (same options, no "
                   f"--shard) writes the output from the cache")
        return
    report = prepare(src, out, config, workers=workers, cache_dir=cache_dir, report_html=not no_html,
                     processes=processes)
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
