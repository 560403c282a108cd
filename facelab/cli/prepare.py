"""CLI commands of the prepare stage (see facelab/prepare/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from facelab.align import list_templates
from facelab.cli._config import Flag, options, parse_pairs
from facelab.errors import ConfigError
from facelab.prepare import BACKGROUND_MODES, CROP_FORMATS, LIGHT_MODES, MULTI_FACE_POLICIES, PrepareConfig

#: PrepareConfig fields whose flag is not ``--field-name``, or that are choices.
PREPARE_FLAGS = {
    "detector_options": Flag(("--detector-option", "-D")),
    "template": Flag(choices=tuple(list_templates())),
    "multi_face": Flag(choices=MULTI_FACE_POLICIES),
    "light": Flag(choices=LIGHT_MODES),
    "background": Flag(choices=BACKGROUND_MODES),
    "format": Flag(("--format",), choices=CROP_FORMATS),
}


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("prepare")(prepare_cmd)
    app.command("detectors")(detectors_cmd)


def prepare_config(values: dict[str, Any]) -> PrepareConfig:
    """PrepareConfig from its options; ``-D`` keys are checked against the detector's own
    parameters by PrepareConfig (with the library's spellings, e.g. OpenCV's minNeighbors)."""
    options_ = parse_pairs(values["detector_options"], None, flag="--detector-option")
    return PrepareConfig(**{**values, "detector_options": options_})


@options(PrepareConfig, flags=PREPARE_FLAGS)
def prepare_cmd(
    src: Path = typer.Argument(..., help="Photos: a folder per class, a CelebA root, or a CSV."),
    out: Path = typer.Argument(..., help="Output folder (same layout and labels, aligned crops)."),
    workers: int = typer.Option(2, help="Parallel workers."),
    processes: Optional[bool] = typer.Option(None, "--processes/--threads",
                                             help="Worker processes or threads [processes from 200 photos on]."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache folder (default $FACELAB_CACHE or ~/.cache/facelab)."),
    no_html: bool = typer.Option(False, "--no-html", help="Skip the HTML report."),
    shard: Optional[str] = typer.Option(None, help="K/N: prepare only slice K of N into the cache (N "
                                                    "processes or machines in parallel); then run the same "
                                                    "command without --shard to write OUT from the cache."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
) -> None:
    """Detect, align and crop the faces of SRC into OUT, with a report of every reject."""
    from facelab.prepare import parse_shard, prepare, prepare_shard

    cfg = prepare_config(config)
    if shard is not None:
        try:
            k, n = parse_shard(shard)
        except ValueError as exc:
            raise ConfigError(f"--shard: {exc}") from None
        part = prepare_shard(src, k, n, cfg, workers=workers, cache_dir=cache_dir, processes=processes)
        typer.echo(part.summary())
        typer.echo(f"next:    when every shard is done, `facelab prepare {src} {out}` (same options, no "
                   f"--shard) writes the output from the cache")
        return
    report = prepare(src, out, cfg, workers=workers, cache_dir=cache_dir, report_html=not no_html,
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
