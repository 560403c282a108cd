"""The training loop, read top to bottom (in the style of torchvision's reference train.py
and nanoGPT): :func:`run_epochs` calls :func:`train_one_epoch` and :func:`evaluate` once
per epoch, then logs, checkpoints and stops early.

Everything the loop reads and changes travels in ONE :class:`Loop` object instead of a
dozen positional parameters: the model (bare and DDP-wrapped), data, loss, runtime, the
current phase's optimiser and schedule, and the :class:`State` a checkpoint saves.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from facelab.augment import AugmentConfig, get_preset
from facelab.metrics import balanced_accuracy, confusion_matrix
from facelab.store import CropStore
from facelab.train.batches import epoch_batches, epoch_inputs
from facelab.train.config import TrainConfig
from facelab.train.dataset import Data
from facelab.train.imbalance import Balance
from facelab.train.rundir import EpochTable, State, save_checkpoint, tb_writer, write_metrics
from facelab.train.runtime import Runtime, all_mean
from facelab.train.schedule import Phase, make_optimizer, phase_of, plan_phases

__all__ = ["Loop", "evaluate", "evaluate_epoch", "predict_logits", "run_epochs", "train_one_epoch"]

log = logging.getLogger("facelab.train")

#: On a GPU the progress bar's running loss is read every this many steps: reading it
#: makes the host wait for the device, so not every step.
POSTFIX_EVERY = 25


@dataclass
class Loop:
    """What the epoch loop works with. Built once per run (and by ``lr_find``)."""

    config: TrainConfig
    rt: Runtime
    data: Data
    model: nn.Module
    """The bare model: validation, checkpoints and the bundle use it."""
    net: nn.Module
    """What trains: ``model`` itself, or its DistributedDataParallel wrapper."""
    loss_fn: nn.Module
    balance: Balance
    batch_size: int
    run_dir: Path
    state: State = field(default_factory=State)
    resume: dict | None = None
    """The checkpoint resumed from: its optimiser and schedule load into the phase it saved."""
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    phase: Phase | None = None
    augment: AugmentConfig = field(init=False)
    scaler: Any = field(init=False)
    """A GradScaler under float16 autocast; None otherwise."""

    def __post_init__(self) -> None:
        self.augment = get_preset(self.config.augment, **self.config.augment_options)
        self.scaler = self.rt.grad_scaler()

    @property
    def opt(self) -> torch.optim.Optimizer:
        if self.optimizer is None:  # a bug: enter_phase makes it
            raise RuntimeError("the loop has no optimiser before enter_phase")
        return self.optimizer


def run_epochs(loop: Loop) -> None:
    """The epoch loop: train, validate, log, checkpoint, stop early."""
    from tqdm.auto import tqdm

    config, rt, state, data = loop.config, loop.rt, loop.state, loop.data
    phases = plan_phases(config)
    total_epochs = phases[-1].first + phases[-1].epochs
    table = EpochTable(config.progress and rt.main)
    tb = tb_writer(loop.run_dir, config.tensorboard and rt.main)
    if state.history and rt.main:
        write_metrics(loop.run_dir, state.history)  # drops the row of an epoch lost to a crash
    table.header()
    for epoch in range(state.epoch, total_epochs):
        seed = config.seed * 100_003 + epoch
        batches = epoch_batches(len(data.train_x), loop.batch_size, seed, rt, config.max_batches,
                                loop.balance.sample_weight, data.train_part, data.part_rows)
        phase = enter_phase(loop, phase_of(phases, epoch), len(batches))
        t0 = time.perf_counter()
        with tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{total_epochs}", leave=False,
                  disable=not (config.progress and rt.main)) as bar:
            train_loss, seen = train_one_epoch(loop, batches, torch.Generator().manual_seed(seed + rt.rank), bar)
        train_secs = time.perf_counter() - t0
        metrics = evaluate(loop)
        row = {"epoch": epoch + 1, "phase": phase.name, "train_loss": all_mean(train_loss, rt),
               "valid_loss": metrics["valid_loss"], "accuracy": metrics["accuracy"],
               "balanced_accuracy": metrics["balanced_accuracy"],
               "lr": max(gr["lr"] for gr in loop.opt.param_groups),
               "images_per_second": seen * rt.world / max(train_secs, 1e-9), "time": time.perf_counter() - t0,
               **{f"acc_{k}": v for k, v in metrics.get("per_label", {}).items()}}
        better = record(state, row, config.monitor)
        if rt.main:
            table.row(row)
            write_metrics(loop.run_dir, state.history)
            save_checkpoint(loop.run_dir, loop.net, loop.opt, loop.scheduler, state, phase, better)
            if tb is not None:
                for key in ("train_loss", "valid_loss", "accuracy", "lr", "images_per_second"):
                    tb.add_scalar(key, row[key], epoch + 1)
                tb.flush()
        if config.patience and state.bad_epochs >= config.patience:
            log.info("early stopping: no improvement of %s for %d epochs", config.monitor, config.patience)
            break
    if tb is not None:
        tb.close()


def enter_phase(loop: Loop, phase: Phase, steps: int) -> Phase:
    """A new optimiser and schedule when the epoch starts a phase (frozen head -> all
    layers); resuming inside the checkpoint's phase restores its optimiser and schedule."""
    if phase == loop.phase:
        return phase
    loop.optimizer, loop.scheduler = make_optimizer(loop.model, phase, loop.config, steps)
    if loop.resume is not None and loop.resume.get("phase") == phase.name:
        loop.optimizer.load_state_dict(loop.resume["optimizer"])
        loop.scheduler.load_state_dict(loop.resume["scheduler"])
    loop.phase = phase
    return phase


def train_one_epoch(loop: Loop, batches: list[torch.Tensor], g: torch.Generator,
                    bar: Any = None) -> tuple[float, int]:
    """One pass over ``batches``; returns (mean training loss, images seen).

    The loss is summed on the device and read once at the end (and every
    :data:`POSTFIX_EVERY` steps for the bar on a GPU): reading it every step would make the
    host wait for the device every step."""
    rt, data, opt = loop.rt, loop.data, loop.opt
    loop.net.train()
    total = torch.zeros((), dtype=torch.float32 if rt.device.type == "mps" else torch.float64, device=rt.device)
    seen = 0
    for step, (idx, x) in enumerate(zip(batches, epoch_inputs(data, batches, rt, loop.augment, g))):
        y = data.task.target(rt.to_device(rt.gather(data.train_y, idx)))
        with rt.autocast():
            loss = loop.loss_fn(loop.net(x).float(), y)
        optimizer_step(loop, opt, loss)
        loop.scheduler.step()
        total += loss.detach().to(total.dtype) * len(idx)
        seen += len(idx)
        if bar is not None:
            bar.update(1)
            if not rt.cuda or step % POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{float(total) / seen:.4f}")
    return float(total) / max(seen, 1), seen


def optimizer_step(loop: Loop, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss`` (through the fp16 loss scaler where there is one)."""
    opt.zero_grad(set_to_none=True)
    if loop.scaler is not None:
        loop.scaler.scale(loss).backward()
        loop.scaler.step(opt)
        loop.scaler.update()
    else:
        loss.backward()
        opt.step()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor | CropStore, rt: Runtime, batch_size: int = 256) -> torch.Tensor:
    """float32 logits of every row of ``x`` (uint8 NHWC crops), on the CPU, read back once."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with rt.autocast():
            out.append(model(rt.to_input(x[i:i + batch_size])).float())
    return torch.cat(out).cpu()


def evaluate(loop: Loop) -> dict[str, Any]:
    """Validation loss and accuracy (multi-label: mean of the per-attribute accuracies) and
    balanced accuracy at the task's thresholds."""
    data, rt = loop.data, loop.rt
    logits = predict_logits(loop.model, data.valid_x, rt)
    loss = float(loop.loss_fn.cpu()(logits, data.task.target(data.valid_y)))
    loop.loss_fn.to(rt.device)
    decided = data.task.decide(data.task.activate(logits).numpy())
    y = data.valid_y.numpy()
    if data.task.kind == "multilabel":
        per = (decided == y).mean(axis=0)
        balanced = [balanced_accuracy(confusion_matrix(y[:, j], decided[:, j], 2)) for j in range(y.shape[1])]
        return {"valid_loss": loss, "accuracy": float(per.mean()), "balanced_accuracy": float(np.mean(balanced)),
                "per_label": {n: float(a) for n, a in zip(data.task.labels, per)}}
    matrix = confusion_matrix(y, decided, len(data.task.labels))
    return {"valid_loss": loss, "accuracy": float((decided == y).mean()), "balanced_accuracy": balanced_accuracy(matrix)}


#: The name the loop had before the package (docs and scripts use it).
evaluate_epoch = evaluate


def record(state: State, row: dict, monitor: str) -> bool:
    """Append the epoch's row to ``state``; returns whether it is the best epoch so far."""
    state.history.append(row)
    state.epoch = row["epoch"]
    better = _improved(row, state, monitor)
    if better:
        state.best, state.best_epoch, state.bad_epochs = row[monitor], row["epoch"], 0
        state.best_loss = row["valid_loss"]
    else:
        state.bad_epochs += 1
    return better


def _improved(row: dict, state: State, monitor: str) -> bool:
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
