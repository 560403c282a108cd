"""The training data, ready for the loop: source -> prepared crops -> task, split and
targets -> the crops in memory (one uint8 tensor) or in crop stores on disk (``facelab.store``)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from facelab import store as S
from facelab._progress import progress as progress_bar
from facelab.bundle.spec import resize_crops
from facelab.data import DataError, SampleTable, load_source
from facelab.groups import describe_groups, embedding_groups
from facelab.images import read_image
from facelab.prepare import as_config, default_cache_dir, prepare_table
from facelab.splits import official_split, split_indices, without_test_split
from facelab.store import CropStore
from facelab.tasks import Task, infer_task, targets_from_table
from facelab.train.config import TrainConfig
from facelab.train.runtime import Runtime, barrier

__all__ = ["Data", "group_people", "load_crops", "load_data", "load_table", "prepared_table", "use_stream"]

log = logging.getLogger("facelab.train")


@dataclass
class Data:
    """The training data, ready for the loop: crops resized to ``size``, in memory or in a
    crop store on disk (``TrainConfig.loader``)."""

    table: SampleTable
    task: Task
    train_x: torch.Tensor | CropStore
    """uint8 (N, size, size, 3): a tensor, or a store indexed the same way."""
    train_y: torch.Tensor
    valid_x: torch.Tensor | CropStore
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
    out = np.empty((len(paths), size, size, 3), np.uint8)
    with progress_bar(len(paths), "loading crops", enabled=progress) as bar:
        for i, p in enumerate(paths):
            out[i] = resize_crops([read_image(p)], size)[0]
            bar.update()
    return out


def load_data(config: TrainConfig, size: int, rt: Runtime | None = None, table: SampleTable | None = None) -> Data:
    """Source (or the ``table`` already read from it) -> prepared crops -> task, split,
    targets -> crops in memory or streamed."""
    table, prep = prepared_table(table if table is not None else load_table(config), config)
    task = infer_task(table, config.task)
    table = without_test_split(table)
    table, groups = group_people(table, task, prep, config)
    train, valid, how = split_indices(table, task, config.valid_fraction, config.resolved_split_seed)
    if len(train) < 2 or len(valid) < 1:
        raise DataError(f"{table.root}: too few photos to train ({len(train)} train, {len(valid)} valid); "
                        f"add photos, or lower --valid-fraction")
    y = torch.from_numpy(targets_from_table(table, task))
    log.info("%s: %s task, %d labels; %d train / %d valid (%s)", table.root, task.kind, len(task.labels),
             len(train), len(valid), how)
    t, v = torch.from_numpy(train), torch.from_numpy(valid)
    if use_stream(config, len(train) + len(valid), size):
        s = open_stores(table, train, valid, config, size, rt)
        return Data(table, task, s.train, y[t], s.valid, y[v], how, prep, groups, train, valid, s.workers,
                    s.part, s.part_rows)
    rows = np.concatenate([train, valid])  # the test partition is never read here
    x = torch.from_numpy(load_crops([table.paths[i] for i in rows], size, config.progress))
    return Data(table, task, x[:len(train)], y[t], x[len(train):], y[v], how, prep, groups, train, valid)


def use_stream(config: TrainConfig, n_rows: int, size: int) -> bool:
    """Stream from a crop store when asked, or (``auto``) when the crops would not fit the
    memory budget. Small data stays in memory: no store to write, no worker processes."""
    if config.loader != "auto":
        return config.loader == "stream"
    return n_rows * size * size * 3 > config.memory_budget_mb * 2**20


@dataclass
class Stores:
    """The streamed side of :class:`Data`: two opened crop stores and how this rank reads."""

    train: CropStore
    valid: CropStore
    workers: int
    part: np.ndarray | None
    part_rows: int


def open_stores(table: SampleTable, train_rows: np.ndarray, valid_rows: np.ndarray, config: TrainConfig, size: int,
                rt: Runtime | None) -> Stores:
    """Train and valid crops in two crop stores under ``<cache>/stores/`` (built where
    missing). Under DDP each rank builds the training shards it reads and rank 0 the valid
    shards; after a barrier, a rank that still misses a shard (a cache folder local to each
    machine) builds it itself."""
    rank, world = (rt.rank, rt.world) if rt is not None else (0, 1)
    local_main = int(os.environ.get("LOCAL_RANK", rank)) == 0
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    parts = {"train": train_rows, "valid": valid_rows}
    paths = {part: [table.paths[i] for i in rows] for part, rows in parts.items()}
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
            barrier(rt)
    if rank == 0:
        for name, rows in parts.items():
            sub = table.subset(rows)
            S.write_index(specs[name], sub.paths, [sub.source_of(i) for i in range(len(sub))], sub.labels,
                          sub.identities, sub.splits)
        log.info("streaming crops: train %s; valid %s", S.describe(specs["train"]), S.describe(specs["valid"]))
    own: np.ndarray | None = None
    part_rows = 0
    if world > 1:
        own = S.rank_rows(specs["train"], rank, world)
        part_rows = min(len(S.rank_rows(specs["train"], r, world)) for r in range(world))
    workers = 2 if config.loader_workers is None else config.loader_workers
    pin = rt is not None and rt.cuda  # read straight into page-locked memory for the copy to the GPU
    return Stores(S.CropStore(specs["train"], pin), S.CropStore(specs["valid"], pin), workers, own, part_rows)


def group_people(table: SampleTable, task: Task, prep: dict | None,
                 config: TrainConfig) -> tuple[SampleTable, dict | None]:
    """Without identity labels or an official partition: face-embedding groups stand in for
    people (``facelab.groups``), so the split holds out whole people. Logs how many people
    each class has and warns where validation cannot be honest. Returns the table (with
    group ids as identities, unless the classes themselves are people) and the report."""
    if not config.group_people or table.has_identities or official_split(table) is not None:
        return table, None
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
