"""CLI commands of the train stage (see facelab/train): train, lr-find, augment-preview, models.

The first three build their options from TrainConfig and AugmentConfig, whose modules
import torch: they live in facelab/cli/train_commands.py, loaded only when one of them runs
or shows its help (facelab/cli/_lazy.py).
"""
from __future__ import annotations

import typer

from facelab.cli._lazy import lazy_command

#: {command: (function in train_commands, the first line of its docstring)}
LAZY_COMMANDS = {
    "train": ("train_cmd", "Train a face classifier on DATA into runs/NAME (config, metrics, checkpoints, bundle)."),
    "lr-find": ("lr_find_cmd", "Learning-rate range test: loss vs rate as a plot, and a suggested --lr."),
    "augment-preview": ("augment_preview_cmd", "Show what an augmentation preset does: a grid of augmented "
                                               "copies of some photos."),
}


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    for name, (function, summary) in LAZY_COMMANDS.items():
        lazy_command(app, name, f"facelab.cli.train_commands:{function}", summary)
    app.command("models")(models_cmd)


def models_cmd() -> None:
    """List the backbones `facelab train --model` knows (any timm name works too)."""
    from facelab.models import BUILTIN, OFFLINE_WEIGHTS, list_models, timm_name

    for name in list_models():
        kind = "from scratch" if name in BUILTIN else (
            "pretrained, offline weights" if timm_name(name) in OFFLINE_WEIGHTS else "pretrained via --weights FILE "
                                                                                    "or --download-weights")
        typer.echo(f"{name:20s} {kind}")
    typer.echo(f"{'face-embed':20s} dlib face embedding + logistic/knn head (people)")
