"""fastai's learning-rate range test (`facelab lr-find`): the same data, model, input path
and loss as training, the rate raised exponentially batch by batch."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from facelab._html import figure_png
from facelab._io import write_bytes
from facelab.bundle.spec import InputSpec
from facelab.models import create_model, get_spec
from facelab.train.config import TrainConfig
from facelab.train.dataset import load_data
from facelab.train.imbalance import class_balance
from facelab.train.loop import Loop, optimizer_step
from facelab.train.runtime import make_runtime

__all__ = ["lr_find", "plot_lr_find", "suggest_lr"]


def lr_find(data: str | Path | TrainConfig, start: float = 1e-6, end: float = 1.0, steps: int = 60,
            **options: Any) -> dict[str, Any]:
    """fastai's learning-rate range test: raise the rate exponentially over ``steps``
    batches, record the smoothed loss, suggest the rate of steepest descent (and the
    minimum / 10). Returns {"lrs", "losses", "suggested", "valley"}."""
    config = replace(data, **options) if isinstance(data, TrainConfig) else TrainConfig(data=str(data), **options)
    spec = get_spec(config.model)
    rt = make_runtime(config, InputSpec(config.image_size or spec.size, spec.mean, spec.std))
    torch.manual_seed(config.seed)
    d = load_data(config, rt.spec.size)
    model = create_model(config.model, d.task.num_outputs, pretrained=bool(config.pretrained),
                         weights=config.weights, allow_download=config.download_weights).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    balance = class_balance(d.train_y, d.task, config.imbalance, config.imbalance_ratio)
    weight = balance.loss_weight.to(rt.device) if balance.loss_weight is not None else None
    loop = Loop(config, rt, d, model, model, d.task.loss(weight), balance, config.batch_size or 64, Path("."))
    loop.optimizer = torch.optim.AdamW(model.parameters(), lr=start, weight_decay=config.weight_decay)
    lrs, losses = _range_test(loop, torch.Generator().manual_seed(config.seed), start, end, steps)
    return {"lrs": lrs, "losses": losses, **suggest_lr(lrs, losses)}


def _batch_stream(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from torch.randperm(n, generator=g).split(batch_size)


def _range_test(loop: Loop, g: torch.Generator, start: float, end: float, steps: int) -> tuple[list[float], list[float]]:
    d, rt, opt = loop.data, loop.rt, loop.opt
    loop.model.train()
    lrs: list[float] = []
    losses: list[float] = []
    smooth = 0.0
    stream = _batch_stream(len(d.train_x), loop.batch_size, g)
    for i in range(steps):
        lr = start * (end / start) ** (i / max(steps - 1, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = next(stream)
        with rt.autocast():
            out = loop.model(rt.to_input(d.train_x[idx], loop.augment, g)).float()
        loss = loop.loss_fn(out, rt.to_device(d.task.target(d.train_y[idx])))
        optimizer_step(loop, opt, loss)
        smooth = 0.9 * smooth + 0.1 * float(loss.detach())  # read every step: the curve needs it
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
