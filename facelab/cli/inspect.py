"""CLI commands of the inspect stage (see facelab/inspect/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from facelab.cli._config import options, split_list
from facelab.inspect import InspectConfig


def register(app: typer.Typer) -> None:
    """Add `facelab inspect` to `app`."""
    app.command("inspect")(inspect_cmd)


@options(InspectConfig)
def inspect_cmd(
    data: Path = typer.Argument(..., help="Class folders, a CelebA root, or a CSV."),
    out: Path = typer.Option(Path("out/inspect"), "--out", "-o", help="Report folder."),
    attrs: Optional[str] = typer.Option(None, help="Comma-separated attributes to keep (CelebA/CSV)."),
    strict: bool = typer.Option(False, help="Exit with status 1 when an error is found (for CI)."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
) -> None:
    """Report what is wrong with a data set: balance, duplicates, leakage, shortcuts, labels."""
    from facelab.inspect import inspect

    report = inspect(data, out, InspectConfig(**config), attrs=split_list(attrs))
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
