"""CLI commands of the predict stage (see facelab/predict/)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facelab.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("predict")(predict_cmd)


def predict_cmd(
    run: Path = typer.Argument(..., help="Run folder (runs/NAME), bundle folder or ONNX export folder."),
    paths: list[str] = typer.Argument(..., help="Photos, folders or glob patterns."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (one row per face) instead of a table."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON/CSV/table to this file."),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime when possible), onnx or torch."),
    all_faces: bool = typer.Option(False, "--all-faces",
                                   help="Every face of a photo, even when the run keeps only the largest."),
    top: int = typer.Option(3, help="Probabilities shown per face in the table."),
) -> None:
    """Find every face in PATHS and print its box and probabilities per label."""
    from facelab._io import write_text
    from facelab.predict import predict, report_json

    if as_json and as_csv:
        raise ConfigError("choose one of --json and --csv")
    report = predict(run, paths, backend=backend, all_faces=all_faces)
    text = report_json(report) if as_json else report.to_csv() if as_csv else report.table(top)
    if out is not None:
        write_text(out, text if text.endswith("\n") else text + "\n")
        typer.echo(f"{report.summary()}\nwritten: {out}")
        return
    typer.echo(text)
    if not (as_json or as_csv):
        typer.echo(report.summary())
