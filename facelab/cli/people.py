"""CLI commands of the people stage (see facelab/people/): verify, enroll."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("verify")(verify_cmd)
    app.command("enroll")(enroll_cmd)


def verify_cmd(
    a: Path = typer.Argument(..., help="First photo."),
    b: Path = typer.Argument(..., help="Second photo."),
    run: Optional[Path] = typer.Option(None, help="A face-embed run: use its face preparation and "
                                                  "its calibrated pair threshold."),
    threshold: Optional[float] = typer.Option(None, help="Same person when the distance is at most this "
                                                         "(default: the run's, else dlib's 0.6)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Are A and B the same person? Prints the face distance and the threshold used.
    Exit code 0 = same person, 1 = different people."""
    from facelab.people import verify

    result = verify(a, b, run=run, threshold=threshold)
    typer.echo(json.dumps(asdict(result)) if as_json else result.summary())
    raise SystemExit(0 if result.same else 1)


def enroll_cmd(
    run: Path = typer.Argument(..., help="A run trained with --model face-embed (or its bundle folder)."),
    person: str = typer.Argument(..., help="Name of the person (new or already known)."),
    photos: list[Path] = typer.Argument(..., help="Photos of the person (files or folders)."),
) -> None:
    """Add a person, or more photos of a known person, to a face-embed run in seconds
    (no retraining of the embedding; the bundle is updated atomically)."""
    from facelab.data import is_image_file
    from facelab.people import enroll

    files: list[Path] = []
    for p in photos:
        files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)) if p.is_dir() else [p]
    report = enroll(run, person, files, progress=True)
    typer.echo(report.summary())
    for path in report.skipped:
        typer.echo(f"  skipped (no face): {path}")
