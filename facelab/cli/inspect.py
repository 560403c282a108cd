"""CLI commands of the inspect stage (see facelab/inspect.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add `facelab inspect` to `app`."""

    @app.command("inspect")
    def inspect_cmd(
        data: Path = typer.Argument(..., help="Class folders, a CelebA root, or a CSV."),
        out: Path = typer.Option(Path("out/inspect"), "--out", "-o", help="Report folder."),
        attrs: Optional[str] = typer.Option(None, help="Comma-separated attributes to keep (CelebA/CSV)."),
        faces: bool = typer.Option(False, "--faces", help="Also run face detection (slower; cached)."),
        detector: Optional[str] = typer.Option(None, help="Detector for --faces (default: prepare's)."),
        embed: bool = typer.Option(False, "--embed", help="Suspect label errors from face embeddings."),
        run: Optional[str] = typer.Option(None, help="Trained run: flag photos it confidently disagrees with."),
        samples: int = typer.Option(8, help="Sample photos shown per class."),
        duplicates: bool = typer.Option(True, help="Look for exact and near-identical pictures."),
        workers: int = typer.Option(2, help="Threads reading images."),
        strict: bool = typer.Option(False, help="Exit with status 1 when an error is found (for CI)."),
    ) -> None:
        """Report what is wrong with a data set: balance, duplicates, leakage, shortcuts, labels."""
        from facelab.inspect import InspectConfig, inspect

        config = InspectConfig(samples=samples, duplicates=duplicates, faces=faces, detector=detector,
                               embed=embed, run=run, workers=workers)
        keep = [a.strip() for a in attrs.split(",") if a.strip()] if attrs else None
        report = inspect(data, out, config, attrs=keep)
        s = report.summary
        typer.echo(f"{s['photos']} photos ({s['unreadable']} unreadable), {len(report.findings)} finding(s)")
        for f in report.findings:
            typer.echo(f"  {f.severity.upper():<7} [{f.check}] {f.message}")
            for line in f.files[:5]:
                typer.echo(f"      {line}")
            if len(f.files) > 5:
                typer.echo(f"      ... {len(f.files) - 5} more in {report.json}")
            if f.fix:
                typer.echo(f"      fix: {f.fix}")
        typer.echo(f"report: {report.html}")
        if strict and any(f.severity == "error" for f in report.findings):
            raise SystemExit(1)  # (typer.Exit codes are dropped by standalone_mode=False)
