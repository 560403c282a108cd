"""The run folder (docs/ARCHITECTURE.md): ``config.json``, ``labels.json``, ``split.json``,
``metrics.csv``, ``tb/``, ``checkpoints/{last,best}.pt`` and ``bundle/``. Every file is
written atomically (``facelab._io``), so a killed run leaves whole files and resumes from
its last checkpoint."""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from facelab._io import read_json, save_torch, write_json, write_text
from facelab.bundle import BUNDLE_DIR, Bundle, ModelRef
from facelab.bundle.spec import InputSpec
from facelab.errors import ConfigError, RunExists
from facelab.train.config import TrainConfig
from facelab.train.dataset import Data
from facelab.train.runtime import unwrap
from facelab.train.schedule import Phase

__all__ = ["METRIC_COLUMNS", "EpochTable", "State", "check_run_dir", "save_checkpoint", "write_bundle",
           "tb_writer", "write_config", "write_metrics", "write_split"]

log = logging.getLogger("facelab.train")


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


def save_checkpoint(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, state: State,
                    phase: Phase, best: bool) -> None:
    """``last.pt`` (weights, optimiser, schedule, phase, :class:`State`: all a resume needs)
    every epoch; ``best.pt`` (weights and state) when the epoch is the best so far."""
    ckpt = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "phase": phase.name, "state": asdict(state)}
    save_torch(run_dir / "checkpoints" / "last.pt", ckpt)
    if best:
        save_torch(run_dir / "checkpoints" / "best.pt", {"model": ckpt["model"], "state": ckpt["state"]})


def check_run_dir(config: TrainConfig, run_dir: Path) -> dict | None:
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
            raise ConfigError(f"{run_dir}: cannot resume with different {changed} (saved: "
                             f"{ {k: saved[k] for k in changed} }); use another --name")
        return torch.load(last, map_location="cpu", weights_only=False)
    if (run_dir / "config.json").exists() and not config.overwrite:
        raise RunExists(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite "
                        f"to replace it, or choose another --name")
    return None


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


def tb_writer(run_dir: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def write_config(run_dir: Path, config: TrainConfig, resolved: dict[str, Any]) -> None:
    """``config.json``: the config as given (``TrainConfig.from_dict`` reads it back) plus
    ``resolved``, what the open fields became (for reading, ignored when loading)."""
    write_json(run_dir / "config.json", {**config.to_dict(), "resolved": resolved})


def write_split(run_dir: Path, data: Data) -> None:
    """``split.json``: which photos trained and which validated, so evaluate (and an
    ensemble's members) never score a photo the model learned from."""
    def rows(idx: np.ndarray | None) -> list[str]:
        return [str(data.table.paths[i]) for i in (idx if idx is not None else [])]

    write_json(run_dir / "split.json", {"how": data.split, "train": rows(data.train_rows),
                                        "valid": rows(data.valid_rows)})


def write_bundle(config: TrainConfig, data: Data, spec: InputSpec, state: State, run_dir: Path) -> None:
    """``bundle/``: the best epoch's weights and ``bundle.json`` (model, task, the ``input``
    entry of ``spec``, face preparation, a training summary)."""
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    rows = state.history
    ips = float(np.mean([r["images_per_second"] for r in rows])) if rows else 0.0
    best_row = rows[state.best_epoch - 1] if 0 < state.best_epoch <= len(rows) else {}
    summary = {"run": str(run_dir), "epochs": state.epoch, "best_epoch": state.best_epoch,
               "images_per_second": round(ips, 2), "valid_loss": best_row.get("valid_loss"),
               "accuracy": best_row.get("accuracy"), "balanced_accuracy": best_row.get("balanced_accuracy"),
               "split": data.split, "data": str(config.data)}
    bundle = Bundle(ModelRef("torch", config.model, dict(config.model_kwargs)), data.task, spec, data.prepare, summary)
    bundle.write(run_dir / BUNDLE_DIR, best["model"])
    log.info("run written to %s (best epoch %d, %s %.4f)", run_dir, state.best_epoch, config.monitor,
             state.best if state.best is not None else float("nan"))
