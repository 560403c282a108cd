"""CLI commands of the evaluate stage (see facelab/evaluate/ and facelab/compare.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from facelab.cli._config import Flag, options
from facelab.data import SPLITS
from facelab.errors import ConfigError
from facelab.evaluate import EvaluateConfig
from facelab.metrics import THRESHOLD_METRICS

#: EvaluateConfig fields whose flag is not ``--field-name`` alone: choices, words for None.
EVALUATE_FLAGS = {
    "split": Flag(choices=(*SPLITS, "all"), none="all"),
    "tune_split": Flag(choices=(*SPLITS, "auto", "none"), none="none"),
    "tune_metric": Flag(choices=THRESHOLD_METRICS),
}


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("evaluate")(evaluate_cmd)
    app.command("compare")(compare_cmd)


@options(EvaluateConfig, flags=EVALUATE_FLAGS)
def evaluate_cmd(
    paths: list[Path] = typer.Argument(..., help="RUN [RUN ...] DATA: one run, an ensemble folder or several "
                                                  "runs (evaluated as an ensemble), then the data source."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the run / ensemble folder)."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
) -> None:
    """Metrics beside baselines, plots, top losses, subgroups, calibration, HTML report and MODEL_CARD.md."""
    from facelab.evaluate import evaluate

    if len(paths) < 2:
        raise ConfigError("give a run folder and a data source: facelab evaluate RUN DATA")
    result = evaluate(paths[:-1], paths[-1], out, EvaluateConfig(**config))
    typer.echo(result.summary())
    t = result.metrics["thresholds"]
    if t.get("tuned"):
        typer.echo(f"thresholds tuned on {t['split']} ({t['metric']}): "
                   + ", ".join(f"{v:.2f}" for v in t["thresholds"])
                   + (f" -> saved to {', '.join(t['saved_to'])}" if t.get("saved_to") else ""))
    elif t.get("why"):
        typer.echo(f"thresholds not tuned: {t['why']}")
    for col, sg in result.metrics["subgroups"].items():
        groups = ", ".join(f"{g} {r['accuracy']:.3f} (n={r['n']})" for g, r in sg["groups"].items())
        typer.echo(f"subgroup {col}: {groups}; worst - best {sg['gap']:+.3f}")
    for name in ("report", "metrics", "model_card"):
        typer.echo(f"{name + ':':12s}{result.files[name]}")


def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders to compare."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: compare/ beside the first run)."),
) -> None:
    """One table across runs: model, parameters, size, epochs, time, speed, metrics (+ CSV, plot)."""
    from facelab.compare import compare, format_table

    rows = compare(runs, out)
    typer.echo(format_table(rows))
    folder = Path(out) if out else Path(runs[0]).parent / "compare"
    typer.echo(f"csv: {folder / 'compare.csv'}  plot: {folder / 'compare.png'}  html: {folder / 'compare.html'}")
