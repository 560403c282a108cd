"""CLI commands of the export stage (see facelab/export/)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("export")(export_cmd)


def export_cmd(
    run: Path = typer.Argument(..., help="Run folder (runs/NAME) or its bundle/ folder."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Folder for a stand-alone ONNX bundle, or a .onnx path "
                                            "(default: model.onnx inside the run's bundle)."),
    opset: int = typer.Option(17, help="ONNX opset."),
    tolerance: float = typer.Option(1e-4, help="Max abs difference vs PyTorch allowed."),
) -> None:
    """Export RUN's model to ONNX with its labels, thresholds and preprocessing, after a
    parity check against PyTorch."""
    from facelab.export import export

    report = export(run, out=out, format=fmt, opset=opset, tolerance=tolerance)
    typer.echo(report.summary())
    if report.bundle:
        typer.echo(f"bundle:  {report.bundle} (load it with facelab.load, predict or serve)")
