"""Which photos train and which validate: the held-out split, in one place.

Training writes the split it used to the run's ``split.json``; ``facelab evaluate`` reads
that file and falls back to :func:`split_indices` here for runs written before it existed,
so both draw the same photos without evaluate importing the training code.

The rules: a source's own partition is used as it is; otherwise whole people are held out
when people are known (and are not the classes themselves), else the split is stratified
by class (or by the rarest positive attribute); always seeded.
"""
from __future__ import annotations

import logging

import numpy as np

from facelab.data import SampleTable
from facelab.errors import DataError
from facelab.tasks import Task, targets_from_table

__all__ = ["DEFAULT_VALID_FRACTION", "official_split", "split_indices", "without_test_split"]

log = logging.getLogger(__name__)

#: Held out for validation when the source has no official partition.
DEFAULT_VALID_FRACTION = 0.2


def _people_task(table: SampleTable) -> bool:
    """True when the classes ARE the people (one class per identity): the same people must
    then be in train and validation."""
    if table.kind != "classes" or not table.has_identities:
        return table.kind == "classes"
    pairs = {(i, int(c)) for i, c in zip(table.identities, table.labels)}
    return len(pairs) == len({i for i, _ in pairs}) == len(set(int(c) for c in table.labels))


def _strata(y: np.ndarray) -> np.ndarray:
    """A stratification key per row: the class, or the rarest positive attribute."""
    if y.ndim == 1:
        return y
    freq = y.mean(axis=0)
    rarest = np.where(y.any(axis=1), np.argmin(np.where(y > 0, freq[None, :], 2.0), axis=1), -1)
    return rarest


def official_split(table: SampleTable) -> tuple[np.ndarray, np.ndarray] | None:
    """(train rows, valid rows) of the source's own partition, or None when it has none."""
    if not table.has_splits:
        return None
    splits = np.array([s or "" for s in table.splits])
    train, valid = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "valid")
    return (train, valid) if len(train) and len(valid) else None


def split_indices(table: SampleTable, task: Task, valid_fraction: float | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train rows, valid rows, how): the official partition when present; else grouped by
    person when people are known (and are not the classes), else stratified; seeded.

    ``valid_fraction`` None means :data:`DEFAULT_VALID_FRACTION`; a fraction given with an
    official partition is refused rather than silently ignored."""
    official = official_split(table)
    if official is not None:
        if valid_fraction is not None:
            raise DataError(f"{table.root} has an official train/valid partition, so --valid-fraction "
                            f"{valid_fraction} would be ignored; drop --valid-fraction to use the "
                            f"partition, or give a source without one (e.g. a CSV with no split column)")
        return official[0], official[1], "official partition"
    fraction = DEFAULT_VALID_FRACTION if valid_fraction is None else valid_fraction
    rng = np.random.default_rng(seed)
    strata = _strata(targets_from_table(table, task))
    if table.has_identities and not _people_task(table):
        ids = np.array([str(i) for i in table.identities])
        valid = _group_split(ids, strata, fraction, rng)
        if table.kind == "classes":
            valid = _keep_every_class(valid, strata, table)
        n_people = len(np.unique(ids[valid]))
        return np.setdiff1d(np.arange(len(ids)), valid), valid, f"identity-disjoint ({n_people} people held out)"
    valid_parts = []
    for s in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == s))
        valid_parts.append(rows[:int(round(len(rows) * fraction))])
    valid = np.sort(np.concatenate(valid_parts))
    return np.setdiff1d(np.arange(len(strata)), valid), valid, "stratified"


def _keep_every_class(valid: np.ndarray, y: np.ndarray, table: SampleTable) -> np.ndarray:
    """A class whose every photo was held out could never be learned: its photos go back to
    training (logged), so validation never asks for a class the model has not seen."""
    lost = [c for c in np.unique(y) if not np.setdiff1d(np.flatnonzero(y == c), valid).size]
    if lost:
        log.warning("%s: %d class(es) had all their photos in the people held out for validation (%s); "
                    "they stay in training", table.root, len(lost), ", ".join(table.label_names[int(c)] for c in lost[:5]))
        valid = valid[~np.isin(y[valid], lost)]
    return valid


def _group_split(ids: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Valid rows: whole people, drawn per stratum (a person belongs to the stratum most of
    their photos are in) until each stratum has about ``fraction`` of its photos held out;
    a stratum's last person always stays in training."""
    people, person = np.unique(ids, return_inverse=True)
    levels, stratum = np.unique(strata, return_inverse=True)
    counts = np.zeros((len(people), len(levels)), np.int64)
    np.add.at(counts, (person, stratum), 1)
    home = counts.argmax(axis=1)
    size = counts.sum(axis=1)
    held: list[int] = []
    for level in range(len(levels)):
        mine = rng.permutation(np.flatnonzero(home == level))
        target, taken = fraction * counts[:, level].sum(), 0
        for p in mine[:-1]:
            if taken >= target or (taken and taken + size[p] > 1.5 * target):
                break
            held.append(int(p))
            taken += int(size[p])
    if not held:  # every stratum has one person only: hold out one person at random
        held = [int(rng.integers(len(people)))]
    return np.flatnonzero(np.isin(person, held))



def without_test_split(table: SampleTable) -> SampleTable:
    """A source with train/ and test/ but no valid/ split: validation is drawn from the
    training photos only; the test photos are never trained or validated on."""
    if not table.has_splits or official_split(table) is not None:
        return table
    keep = [i for i, s in enumerate(table.splits) if s != "test"]
    if len(keep) < len(table):
        log.info("%s: %d test photos kept out of training and validation", table.root, len(table) - len(keep))
    return table.subset(keep)

