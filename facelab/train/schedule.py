"""How long and how fast: the epoch/batch budget, the phases (frozen head, then all
layers) and each phase's optimiser and learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from facelab.models import backbone_parameters, classifier_parameters
from facelab.train.config import TrainConfig
from facelab.train.runtime import Runtime

__all__ = ["BATCH_RANGE", "EPOCH_RANGE", "Phase", "base_lr", "cosine", "make_optimizer", "one_cycle", "phase_of",
           "plan_phases", "resolve_budget"]


#: Bounds of the automatic epoch count and batch size.
EPOCH_RANGE = (4, 40)
BATCH_RANGE = (4, 64)


def resolve_budget(config: TrainConfig, n_train: int, rt: Runtime) -> tuple[int, int]:
    """(batch size, epochs) where the config leaves them open.

    Size the work by optimizer steps, not epochs: 16 photos at batch 64 made ONE step per
    epoch, and 4 epochs of that left a two-person model at its initial guess. Batches are a
    16th of the photos (4..64; 256 on a GPU), and epochs make about ``min_steps`` steps."""
    per_rank = max(1, n_train // rt.world)
    if config.batch_size:
        batch = config.batch_size
    elif rt.cuda:
        batch = 256
    else:
        batch = int(np.clip(per_rank // 16, *BATCH_RANGE))
    if config.epochs:
        return batch, config.epochs
    steps = max(1, per_rank // batch)
    return batch, int(np.clip(math.ceil(config.min_steps / steps), *EPOCH_RANGE))


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs sharing one optimiser and schedule."""

    name: str
    """``frozen`` (head only) or ``all``."""
    first: int
    epochs: int


def plan_phases(config: TrainConfig) -> list[Phase]:
    freeze = config.freeze_epochs if config.freeze_epochs is not None else (1 if config.pretrained else 0)
    if config.epochs is None:  # a bug, not the user's: the loop runs resolve_budget's epochs
        raise ValueError("plan_phases needs the resolved epoch count (resolve_budget)")
    phases = [Phase("frozen", 0, freeze)] if freeze else []
    return phases + [Phase("all", freeze, config.epochs)]


def phase_of(phases: list[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.first <= epoch < p.first + p.epochs)


def base_lr(config: TrainConfig) -> float:
    return config.lr if config.lr is not None else (2e-3 if config.pretrained else 3e-3)


def make_optimizer(model: nn.Module, phase: Phase, config: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Any]:
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
