"""The train stage's commands whose options need torch's modules: train, lr-find,
augment-preview (registered lazily by facelab/cli/train.py).

`facelab train`'s options are TrainConfig's fields (facelab/cli/_config.py: name, type,
default and help from the field), with the names the CLI has always had.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from facelab.augment import PRESETS, AugmentConfig
from facelab.cli._config import Flag, options, parse_pairs
from facelab.errors import ConfigError
from facelab.models import BUILTIN
from facelab.people import HEADS, OPEN_SET_RULES, FaceEmbedConfig
from facelab.prepare import PrepareConfig
from facelab.tasks import TASK_KINDS
from facelab.train import (FACE_EMBED, IMBALANCE_MODES, LOADERS, MONITORS, SCHEDULES, TrainConfig, lr_find,
                           plot_lr_find, train)

#: TrainConfig fields whose flag is not ``--field-name``, or that are choices.
TRAIN_FLAGS = {
    "model": Flag(("--model", "-m")),
    "task": Flag(choices=TASK_KINDS),
    "image_size": Flag(("--size",)),
    "schedule": Flag(choices=SCHEDULES),
    "augment": Flag(choices=tuple(PRESETS)),
    "augment_options": Flag(("--augment-option", "-A")),
    "imbalance": Flag(choices=IMBALANCE_MODES),
    "monitor": Flag(choices=MONITORS),
    "loader": Flag(choices=LOADERS),
    "prepare": Flag(("--prepare-option", "-P")),
    "model_kwargs": Flag(("--model-option", "-M")),
}
#: TrainConfig fields with no flag: the data source is train's argument.
TRAIN_EXCLUDED = ("data",)
#: face-embed head options, given only when set (they go into model_kwargs); the others
#: (seed, valid_fraction, overwrite) are TrainConfig's own flags.
FACE_EMBED_FIELDS = ("head", "knn_k", "C", "target_far", "unknown_score")
FACE_EMBED_FLAGS = {
    "head": Flag(choices=HEADS, unset=True),
    "knn_k": Flag(unset=True),
    "C": Flag(("--logreg-c",), unset=True),
    "target_far": Flag(unset=True),
    "unknown_score": Flag(choices=OPEN_SET_RULES, unset=True),
}
LR_FIND_FIELDS = ("model", "attrs", "task", "image_size", "batch_size", "pretrained", "seed")


def model_options(model: str, items: list[str], given: dict[str, Any]) -> dict[str, Any]:
    """``-M KEY=VALUE`` typed by what ``model`` takes (face-embed: FaceEmbedConfig's fields;
    lenet5/smallvgg: their builder's parameters; a timm model: any key, JSON values), plus
    the face-embed flags that were given."""
    if model == FACE_EMBED:
        kwargs = parse_pairs(items, FaceEmbedConfig, flag="--model-option", skip=("seed", "overwrite"))
        return {**kwargs, **given}
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise ConfigError(f"{flags}: only for --model {FACE_EMBED} (this run trains {model})")
    builder = BUILTIN[model].builder if model in BUILTIN else None
    return parse_pairs(items, builder, flag="--model-option", skip=("num_outputs",))


@options(FaceEmbedConfig, into="face_embed", include=FACE_EMBED_FIELDS, flags=FACE_EMBED_FLAGS)
@options(TrainConfig, exclude=TRAIN_EXCLUDED, flags=TRAIN_FLAGS)
def train_cmd(
    data: Path = typer.Argument(..., help="Photos: folder per class, CelebA root, CSV, or a `facelab prepare` output."),
    detector: Optional[str] = typer.Option(None, help="Face detector for raw photos (short for -P detector=NAME)."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
    face_embed: dict[str, Any] = {},  # noqa: B006
) -> None:
    """Train a face classifier on DATA into runs/NAME (config, metrics, checkpoints, bundle)."""
    values = dict(config)
    values["augment_options"] = parse_pairs(values["augment_options"], AugmentConfig, flag="--augment-option")
    values["model_kwargs"] = model_options(values["model"], values["model_kwargs"],
                                           {k: v for k, v in face_embed.items() if v is not None})
    prepare = parse_pairs(values["prepare"], PrepareConfig, flag="--prepare-option")
    if detector:
        prepare["detector"] = detector
    values["prepare"] = prepare or None
    run = train(TrainConfig(data=str(data), **values))
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every rank returns; one says where the run is
        typer.echo(f"run:    {run}")
        typer.echo(f"next:   facelab evaluate {run}")


@options(TrainConfig, include=LR_FIND_FIELDS, flags=TRAIN_FLAGS)
def lr_find_cmd(
    data: Path = typer.Argument(..., help="The data source to train on."),
    steps: int = typer.Option(60, help="Steps of the range test."),
    plot: Path = typer.Option(Path("lr_find.png"), help="Where to save the loss curve."),
    config: dict[str, Any] = {},  # noqa: B006 - filled by @options
) -> None:
    """Learning-rate range test: loss vs rate as a plot, and a suggested --lr."""
    result = lr_find(str(data), steps=steps, tensorboard=False, **config)
    plot_lr_find(result, plot)
    typer.echo(f"suggested lr (steepest descent): {result['suggested']:.2e}")
    typer.echo(f"valley (minimum / 10):           {result['valley']:.2e}")
    typer.echo(f"plot: {plot}")


def augment_preview_cmd(
    data: Path = typer.Argument(..., help="A data source (its first photos are shown) or one image."),
    out: Path = typer.Option(Path("augment_preview.png"), help="PNG grid to write."),
    preset: str = typer.Option("fastai", help="none, light, fastai or strong."),
    augment_option: list[str] = typer.Option([], "--augment-option", "-A",
                                             help="Preset override KEY=VALUE (AugmentConfig fields)."),
    photos: int = typer.Option(4, help="How many photos (rows)."),
    per_photo: int = typer.Option(8, help="Tiles per row: the original, then augmentations."),
    size: int = typer.Option(128, help="Tile side in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Show what an augmentation preset does: a grid of augmented copies of some photos."""
    from facelab.augment import get_preset, preview, preview_images

    cfg = get_preset(preset, **parse_pairs(augment_option, AugmentConfig, flag="--augment-option"))
    path = preview(preview_images(data, photos), cfg, out, per_image=per_photo, size=size, seed=seed)
    typer.echo(f"{preset}: {cfg.to_dict()}")
    typer.echo(f"grid: {path}")
