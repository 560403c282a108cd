"""CLI commands of the train stage (see facelab/train.py): train, lr-find, augment-preview."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("train")(train_cmd)
    app.command("lr-find")(lr_find_cmd)
    app.command("augment-preview")(augment_preview_cmd)
    app.command("models")(models_cmd)


def _options(items: list[str], hint: str) -> dict[str, Any]:
    """["max_rotate=20", "flip=false"] -> {"max_rotate": 20, "flip": False}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=hint)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _prepare(detector: Optional[str], prepare_option: list[str]) -> Optional[dict]:
    given = _options(prepare_option, "--prepare-option")
    if detector:
        given["detector"] = detector
    return given or None


def _attrs(attrs: Optional[str]) -> Optional[list[str]]:
    return [a.strip() for a in attrs.split(",") if a.strip()] if attrs else None


def train_cmd(
    data: Path = typer.Argument(..., help="Photos: folder per class, CelebA root, CSV, or a `facelab prepare` output."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone (`facelab models`), any timm name, "
                                        "or face-embed [mobilenetv2_100]."),
    name: Optional[str] = typer.Option(None, help="Run name: runs/NAME [<data>-<model>]."),
    out: str = typer.Option("runs", help="Folder holding the runs."),
    task: Optional[str] = typer.Option(None, help="binary, multiclass or multilabel [inferred]."),
    attrs: Optional[str] = typer.Option(None, help="Attributes to learn, e.g. Smiling,Eyeglasses [all]."),
    epochs: Optional[int] = typer.Option(None, help="Epochs training all layers (default: enough for ~150 "
                                                    "optimizer steps, 4 to 40)."),
    freeze_epochs: Optional[int] = typer.Option(None, help="Head-only epochs first [1 for pretrained, else 0]."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default: a 16th of the photos, 4 to 64; 256 on a GPU)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [2e-3 transfer, 3e-3 scratch]."),
    size: Optional[int] = typer.Option(None, "--size", help="Input side in pixels [model default]."),
    schedule: str = typer.Option("onecycle", help="onecycle or cosine."),
    augment: str = typer.Option("fastai", help="Augmentation preset: none, light, fastai, strong."),
    augment_option: list[str] = typer.Option([], "--augment-option", "-A", help="Preset override KEY=VALUE."),
    imbalance: str = typer.Option("auto", help="auto, none, weighted or oversample."),
    valid_fraction: Optional[float] = typer.Option(None, help="Validation share when the data has no official "
                                                   "split [0.2]; refused when it has one."),
    group_people: bool = typer.Option(True, "--group-people/--no-group-people",
                                      help="Without identity labels, split by face-embedding groups (new people "
                                           "in validation)."),
    seed: int = typer.Option(0, help="Random seed (splits, init, shuffling, augmentation)."),
    patience: Optional[int] = typer.Option(None, help="Early stopping after N epochs without improvement."),
    monitor: str = typer.Option("balanced_accuracy", help="balanced_accuracy, accuracy or valid_loss picks the "
                                "best checkpoint (ties: lower valid_loss)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="ImageNet weights [yes for transfer models]."),
    weights: Optional[Path] = typer.Option(None, help="Local backbone weights file."),
    download_weights: bool = typer.Option(False, "--download-weights", help="Allow a hub download."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, help="CPU threads [torch default / OMP_NUM_THREADS]."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision: bf16 (fp16 on GPUs without "
                                       "bf16) [on for GPUs]."),
    max_batches: Optional[int] = typer.Option(None, help="Cap on steps per epoch (smoke runs)."),
    ensemble: int = typer.Option(1, help="Train K members (seeds seed..seed+K-1) as one ensemble run."),
    model_option: list[str] = typer.Option([], "--model-option", "-M", help="Model option KEY=VALUE, e.g. "
                                           "filters=[12,32] pool=avg (lenet5/smallvgg), drop_rate=0.2 (timm)."),
    detector: Optional[str] = typer.Option(None, help="Face detector for raw photos [yuface]."),
    prepare_option: list[str] = typer.Option([], "--prepare-option", "-P", help="Face preparation KEY=VALUE."),
    cache_dir: Optional[str] = typer.Option(None, help="Face-crop cache [$FACELAB_CACHE or ~/.cache/facelab]."),
    loader: str = typer.Option("auto", help="memory (crops decoded into RAM), stream (a crop store on disk read "
                               "by worker processes; flat memory at any size) or auto (memory while the crops "
                               "fit --memory-budget-mb)."),
    memory_budget_mb: float = typer.Option(1024.0, help="With --loader auto: MB of crops kept in memory before "
                                           "streaming."),
    loader_workers: Optional[int] = typer.Option(None, help="Streaming: worker processes reading and augmenting "
                                                 "batches (default 2; 0 = none)."),
    shard_rows: int = typer.Option(1024, help="Streaming: crops per store shard (DDP ranks own whole shards)."),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing runs/NAME."),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard", help="TensorBoard logs in tb/."),
) -> None:
    """Train a face classifier on DATA into runs/NAME (config, metrics, checkpoints, bundle)."""
    from facelab.train import DEFAULT_MODEL, train

    run = train(str(data), model=model or DEFAULT_MODEL, name=name, out=out, task=task, attrs=_attrs(attrs),
                epochs=epochs, freeze_epochs=freeze_epochs, batch_size=batch_size, lr=lr, image_size=size,
                schedule=schedule, augment=augment, augment_options=_options(augment_option, "--augment-option"),
                imbalance=imbalance, valid_fraction=valid_fraction, group_people=group_people, seed=seed,
                patience=patience, monitor=monitor,
                pretrained=pretrained, weights=str(weights) if weights else None, download_weights=download_weights,
                device=device, amp=amp, threads=threads, max_batches=max_batches, ensemble=ensemble,
                model_kwargs=_options(model_option, "--model-option"),
                prepare=_prepare(detector, prepare_option), cache_dir=cache_dir, loader=loader,
                memory_budget_mb=memory_budget_mb, loader_workers=loader_workers, shard_rows=shard_rows, resume=resume,
                overwrite=overwrite, tensorboard=tensorboard)
    typer.echo(f"run:    {run}")
    typer.echo(f"next:   facelab evaluate {run}")


def lr_find_cmd(
    data: Path = typer.Argument(..., help="The data source to train on."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone [mobilenetv2_100]."),
    attrs: Optional[str] = typer.Option(None, help="Attributes to learn [all]."),
    task: Optional[str] = typer.Option(None, help="binary, multiclass or multilabel [inferred]."),
    size: Optional[int] = typer.Option(None, "--size", help="Input side in pixels [model default]."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size [64]."),
    steps: int = typer.Option(60, help="Steps of the range test."),
    plot: Path = typer.Option(Path("lr_find.png"), help="Where to save the loss curve."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="ImageNet weights."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Learning-rate range test: loss vs rate as a plot, and a suggested --lr."""
    from facelab.train import DEFAULT_MODEL, lr_find, plot_lr_find

    result = lr_find(str(data), model=model or DEFAULT_MODEL, attrs=_attrs(attrs), task=task, image_size=size,
                     batch_size=batch_size, pretrained=pretrained, seed=seed, steps=steps, tensorboard=False)
    plot_lr_find(result, plot)
    typer.echo(f"suggested lr (steepest descent): {result['suggested']:.2e}")
    typer.echo(f"valley (minimum / 10):           {result['valley']:.2e}")
    typer.echo(f"plot: {plot}")


def augment_preview_cmd(
    data: Path = typer.Argument(..., help="A data source (its first photos are shown) or one image."),
    out: Path = typer.Option(Path("augment_preview.png"), help="PNG grid to write."),
    preset: str = typer.Option("fastai", help="none, light, fastai or strong."),
    augment_option: list[str] = typer.Option([], "--augment-option", "-A", help="Preset override KEY=VALUE."),
    photos: int = typer.Option(4, help="How many photos (rows)."),
    per_photo: int = typer.Option(8, help="Tiles per row: the original, then augmentations."),
    size: int = typer.Option(128, help="Tile side in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Show what an augmentation preset does: a grid of augmented copies of some photos."""
    from facelab.augment import get_preset, preview, preview_images

    cfg = get_preset(preset, **_options(augment_option, "--augment-option"))
    path = preview(preview_images(data, photos), cfg, out, per_image=per_photo, size=size, seed=seed)
    typer.echo(f"{preset}: {cfg.to_dict()}")
    typer.echo(f"grid: {path}")


def models_cmd() -> None:
    """List the backbones `facelab train --model` knows (any timm name works too)."""
    from facelab.models import BUILTIN, OFFLINE_WEIGHTS, list_models, timm_name

    for name in list_models():
        kind = "from scratch" if name in BUILTIN else (
            "pretrained, offline weights" if timm_name(name) in OFFLINE_WEIGHTS else "pretrained via --weights FILE "
                                                                                    "or --download-weights")
        typer.echo(f"{name:20s} {kind}")
    typer.echo(f"{'face-embed':20s} dlib face embedding + logistic/knn head (people)")
