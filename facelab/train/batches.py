"""Which rows each step trains on, and the model input of each step.

Row order is drawn with the epoch's seed (every DDP rank draws the same order and takes its
own slice), so a resumed or re-run epoch sees the same batches. Inputs come from memory
(sliced and augmented in the training process) or from a crop store (read by worker
processes; on a CPU they augment too, on a GPU the device does after a pinned copy).
"""
from __future__ import annotations

import multiprocessing
import sys
from typing import Any, Iterator

import numpy as np
import torch

from facelab.augment import AugmentConfig, augment_batch
from facelab.bundle.spec import InputSpec
from facelab.store import CropStore
from facelab.train.dataset import Data
from facelab.train.runtime import Runtime

__all__ = ["epoch_batches", "epoch_inputs"]


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


def epoch_inputs(data: Data, batches: list[torch.Tensor], rt: Runtime, augment: AugmentConfig,
                 g: torch.Generator) -> Iterator[torch.Tensor]:
    """The model input of each batch, in order. In memory: sliced and augmented here, one
    generator for the epoch. Streamed: read by ``data.loader_workers`` processes, batch ``b``
    augmented with its own generator (seed drawn from ``g`` + b), so the result does not
    depend on the number of workers; on a CPU the workers augment, on a GPU the device does
    (after a pinned, non-blocking copy)."""
    if isinstance(data.train_x, torch.Tensor):
        for idx in batches:
            yield rt.to_input(rt.gather(data.train_x, idx), augment, g)
        return
    from torch.utils.data import DataLoader

    seed = int(torch.randint(2**62, (1,), generator=g))
    on_cpu = not rt.cuda
    workers = data.loader_workers
    loader = DataLoader(StreamBatches(data.train_x, batches, augment if on_cpu else None, seed),
                        batch_size=None, num_workers=workers, pin_memory=rt.cuda,
                        worker_init_fn=_worker_init, prefetch_factor=2 if workers else None,
                        multiprocessing_context=_fork_context() if workers else None)
    for b, xb in enumerate(loader):
        yield rt.normalise(xb) if on_cpu else rt.to_input(xb, augment, torch.Generator().manual_seed(seed + b))


class StreamBatches(torch.utils.data.Dataset):
    """Item ``b``: batch ``b``'s crops read from the store; with ``augment``, as a float
    NCHW batch in [0, 1] augmented with the generator seeded ``seed + b``."""

    def __init__(self, store: CropStore, batches: list[torch.Tensor], augment: AugmentConfig | None,
                 seed: int) -> None:
        self.store, self.batches, self.augment, self.seed = store, batches, augment, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        x = self.store.tensor(self.batches[b].numpy())
        if self.augment is None:
            return x
        g = torch.Generator().manual_seed(self.seed + b)
        return augment_batch(InputSpec.to_unit(x), self.augment, g)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the training process owns the cores' threads


def _fork_context() -> Any:
    """fork on Linux: a worker starts in milliseconds instead of importing torch again
    (workers start every epoch). Elsewhere the platform's default (fork is unsafe on macOS)."""
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
