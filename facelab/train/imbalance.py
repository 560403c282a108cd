"""Class imbalance: a weighted loss or oversampling, the output layer started at the
label priors, and decision thresholds that undo the loss weighting.

Why each: see the docstrings; docs/train.md has the measured effect on CelebA attributes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn

from facelab.tasks import Task

__all__ = ["Balance", "class_balance", "compensated_task", "init_head_bias"]


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
    head = cast(Any, model).get_classifier()  # every facelab model has timm's get_classifier()
    if not isinstance(head, nn.Module):
        return
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
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
