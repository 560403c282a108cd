"""CLI commands of the collect stage (see facelab/collect.py)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `facelab collect` to `app`."""

    @app.command("collect")
    def collect_cmd(
        urls_file: Path = typer.Argument(..., help="Text (URL [LABEL] per line) or CSV (url,label) file."),
        out: Path = typer.Argument(..., help="Destination folder (a folder per label + manifest.csv)."),
        workers: int = typer.Option(8, help="Parallel downloads."),
        timeout: float = typer.Option(15.0, help="Seconds per request."),
        retries: int = typer.Option(2, help="Retries after a timeout, connection error or HTTP 429/5xx."),
        max_mb: float = typer.Option(25.0, help="Largest accepted download, in MB."),
        max_mpx: float = typer.Option(40.0, help="Largest accepted image, in megapixels."),
        min_side: int = typer.Option(32, help="Smallest accepted shorter side, in pixels."),
        dedupe: bool = typer.Option(True, help="Skip exact and near-identical copies."),
    ) -> None:
        """Download photos into a folder-per-label data set (resumable; see OUT/manifest.csv)."""
        from facelab.collect import CollectConfig, collect, reasons, summary_rows

        config = CollectConfig(workers=workers, timeout=timeout, retries=retries,
                               max_bytes=int(max_mb * 1e6), max_pixels=int(max_mpx * 1e6),
                               min_side=min_side, dedupe=dedupe)
        report = collect(urls_file, out, config)
        for status, url, reason in reasons(report)[:20]:
            typer.echo(f"  {status:<14} {url}  {reason}")
        typer.echo("  ".join(f"{status}: {n}" for status, n in summary_rows(report)))
        if report.skipped:
            typer.echo(f"{report.skipped} URL(s) settled by an earlier run were skipped")
        typer.echo(f"manifest: {report.manifest}")
