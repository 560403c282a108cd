"""People as classes: folder classes or CelebA-style identities, and the per-person split
that measures top-name accuracy on photos the head did not see."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from facelab.data import SampleTable
from facelab.errors import DataError
from facelab.people.config import FaceEmbedConfig

log = logging.getLogger(__name__)


def identity_table(table: SampleTable) -> SampleTable:
    """The table with one class per person: folder classes as they are, or CelebA-style
    identities turned into classes (rows without an identity dropped)."""
    if table.kind == "classes":
        return table
    if not table.has_identities:
        raise DataError(f"{table.root}: face-embed needs people as classes (a folder per person) "
                        f"or an identity column (CelebA identity_CelebA.txt, CSV 'identity')")
    rows = [i for i, p in enumerate(table.identities) if p is not None]
    if len(rows) < len(table):
        log.warning("%s: %d photo(s) without an identity skipped", table.root, len(table) - len(rows))
    sub = table.subset(rows)
    names = sorted({str(p) for p in sub.identities})
    index = {n: i for i, n in enumerate(names)}
    return replace(sub, kind="classes", label_names=names,
                   labels=np.array([index[str(p)] for p in sub.identities], dtype=np.int64))


def split_per_person(labels: np.ndarray, valid_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out photos: ``valid_fraction`` of each person's photos
    (rounded, at least one photo of every person stays in training)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n = min(int(round(valid_fraction * len(rows))), len(rows) - 1)
        held[rows[:n]] = True
    return held


def _held_out_mask(table: SampleTable, cfg: FaceEmbedConfig) -> np.ndarray:
    """Use the source's own split when the same people appear in train and valid/test;
    a person-disjoint split (CelebA's official one) cannot test recognising known people,
    so then each person's photos are split instead."""
    if table.has_splits:
        split = np.array([s or "train" for s in table.splits])
        train_people = set(table.labels[split == "train"].tolist())
        other = table.labels[split != "train"]
        if len(other) and set(other.tolist()) <= train_people:
            return split != "train"
        log.info("%s: the source's split keeps people apart; splitting each person's photos "
                 "%.0f/%.0f instead", table.root, 100 * (1 - cfg.valid_fraction), 100 * cfg.valid_fraction)
    return split_per_person(table.labels, cfg.valid_fraction, cfg.seed)
