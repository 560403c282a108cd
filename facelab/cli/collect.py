"""CLI commands of the collect stage (see facelab/collect/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from facelab.cli._config import options
from facelab.collect import CollectConfig

#: CollectConfig fields set by other flags: --max-mb and --max-mpx (the CLI's units).
COLLECT_EXCLUDED = ("max_bytes", "max_pixels")


def register(app: typer.Typer) -> None:
    """Add `facelab collect` to `app`."""
    app.command("collect")(collect_cmd)


@options(CollectConfig, exclude=COLLECT_EXCLUDED)
def collect_cmd(
    urls_file: Path = typer.Argument(..., help="Text (URL [LABEL] per line) or CSV (url,label) file."),
    out: Path = typer.Argument(..., help="Destination folder (a folder per label + manifest.csv)."),
    max_mb: float = typer.Option(25.0, help="Largest accepted download, in MB."),
    max_mpx: float = typer.Option(40.0, help="Largest accepted image, in megapixels."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
) -> None:
    """Download photos into a folder-per-label data set (resumable; see OUT/manifest.csv)."""
    from facelab.collect import collect, reasons, summary_rows

    cfg = CollectConfig(max_bytes=int(max_mb * 1e6), max_pixels=int(max_mpx * 1e6), **config)
    report = collect(urls_file, out, cfg)
    for status, url, reason in reasons(report)[:20]:
        typer.echo(f"  {status:<14} {url}  {reason}")
    typer.echo("  ".join(f"{status}: {n}" for status, n in summary_rows(report)))
    if report.skipped:
        typer.echo(f"{report.skipped} URL(s) settled by an earlier run were skipped")
    typer.echo(f"manifest: {report.manifest}")
