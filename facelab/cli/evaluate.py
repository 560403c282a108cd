"""CLI commands of the evaluate stage (see facelab/evaluate.py and facelab/compare.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("evaluate")(evaluate_cmd)
    app.command("compare")(compare_cmd)


def evaluate_cmd(
    paths: list[Path] = typer.Argument(..., help="RUN [RUN ...] DATA: one run, an ensemble folder or several "
                                                  "runs (evaluated as an ensemble), then the data source."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the run / ensemble folder)."),
    split: str = typer.Option("test", help="Split to report on: test, valid, train or all."),
    tune_split: str = typer.Option("auto", help="Split to tune decision thresholds on, none, or auto (valid "
                                   "when it holds >= 10 people)."),
    tune_metric: str = typer.Option("balanced_accuracy", help="Thresholds maximise: balanced_accuracy, accuracy, f1."),
    save_thresholds: bool = typer.Option(True, "--save-thresholds/--no-save-thresholds",
                                         help="Write tuned thresholds into bundle/bundle.json."),
    subgroups: Optional[str] = typer.Option(None, help="Comma-separated attributes (or identity) to split "
                                                       "accuracy by; default Male,Young where present."),
    top_k: int = typer.Option(16, help="Faces per top-loss grid (0 = none)."),
    batch_size: int = typer.Option(64, help="Crops per forward pass."),
) -> None:
    """Metrics beside baselines, plots, top losses, subgroups, calibration, HTML report and MODEL_CARD.md."""
    from facelab.evaluate import EvaluateConfig, evaluate

    if len(paths) < 2:
        raise typer.BadParameter("give a run folder and a data source: facelab evaluate RUN DATA")
    config = EvaluateConfig(split=None if split == "all" else split,
                            tune_split=None if tune_split == "none" else tune_split, tune_metric=tune_metric,
                            save_thresholds=save_thresholds, top_k=top_k, batch_size=batch_size,
                            subgroups=tuple(s.strip() for s in subgroups.split(",") if s.strip()) if subgroups else None)
    result = evaluate(paths[:-1], paths[-1], out, config)
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
