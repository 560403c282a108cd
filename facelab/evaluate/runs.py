"""Which runs are evaluated, their predictors, the data's labels in the model's layout, and
the probabilities every member gives every photo."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._progress import progress as progress_bar
from facelab.backends import load
from facelab.bundle import BUNDLE_FILE, bundle_dir_of
from facelab.data import DataError, SampleTable
from facelab.ensemble import is_ensemble, read_members
from facelab.errors import ConfigError, NotFound
from facelab.images import read_image
from facelab.prepare import prepare_table
from facelab.tasks import Task

log = logging.getLogger(__name__)


def resolve_members(runs: str | Path | Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """Run folders to evaluate, and the ensemble folder when one was given.

    A folder with ``ensemble.json`` expands to its members (paths relative to it or absolute).
    """
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not items:
        raise ConfigError("no run given: pass a run folder (runs/NAME) from `facelab train`")
    members: list[Path] = []
    ensemble_dir = None
    for item in items:
        p = Path(item).expanduser()
        if not p.exists():
            raise NotFound(f"{p}: no such run folder; pass a folder written by `facelab train` "
                           f"(it holds config.json and bundle/bundle.json)")
        if is_ensemble(p):
            members += read_members(p)[0]
            ensemble_dir = ensemble_dir or p
        else:
            members.append(p)
    for m in members:
        try:
            bundle_dir_of(m)
        except FileNotFoundError:
            raise NotFound(f"{m}: not a trained run (no bundle/bundle.json); train it with "
                           f"`facelab train` or pass the run folder it wrote") from None
    return members, ensemble_dir


def bundle_json_path(run: Path) -> Path:
    """The run's bundle.json (through :func:`facelab.bundle.bundle_dir_of`)."""
    return bundle_dir_of(run) / BUNDLE_FILE


def load_predictors(members: Sequence[Path]) -> list[Any]:
    predictors = [load(m) for m in members]
    first = predictors[0]
    for m, p in zip(members[1:], predictors[1:]):
        if p.task.kind != first.task.kind or list(p.labels) != list(first.labels):
            raise ConfigError(f"ensemble members disagree on the task: {members[0]} predicts "
                              f"{first.task.kind} {list(first.labels)}, {m} predicts {p.task.kind} {list(p.labels)}")
        if (p.info.prepare or None) != (first.info.prepare or None):
            raise ConfigError(f"ensemble members {members[0]} and {m} use different face preparation; "
                              f"an ensemble needs identical crops")
    return predictors


# --------------------------------------------------------------------------- data

def task_targets(table: SampleTable, task: Task) -> np.ndarray:
    """The table's labels in ``task``'s layout, matched BY NAME (not by column position).

    Raises :class:`DataError` when the data lacks a label the model predicts.
    """
    names = list(table.label_names)
    if table.kind == "classes":
        if task.kind == "multilabel":
            raise DataError(f"{table.root}: the model predicts attributes {list(task.labels)} but this data "
                            f"has one class per photo; evaluate on an attribute source (CelebA or CSV)")
        unknown = sorted(set(names) - set(task.labels))
        if unknown:
            raise DataError(f"{table.root}: classes {unknown[:10]} are not among the model's labels "
                            f"{list(task.labels)[:10]}; evaluate on data with the same classes")
        index = np.array([task.labels.index(n) for n in names], np.int64)
        return index[table.labels.astype(np.int64)]
    wanted = [task.labels[1]] if task.kind == "binary" else list(task.labels)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise DataError(f"{table.root}: the model predicts {missing} but the data has no such "
                        f"attribute(s); its attributes are {names[:12]}{'...' if len(names) > 12 else ''}")
    cols = [names.index(n) for n in wanted]
    y = table.labels[:, cols]
    return y[:, 0].astype(np.int64) if task.kind == "binary" else y.astype(np.uint8)


def prepared(table: SampleTable, prepare: dict | None, progress: bool) -> SampleTable:
    """The table's photos as the model's crops (same pipeline as training)."""
    if table.prepared is not None:
        used = (table.prepared or {}).get("config")
        if prepare and used and any(used.get(k) != prepare.get(k) for k in ("size", "template", "margin",
                                                                             "light", "background")):
            log.warning("%s was prepared with a different face preparation than the model was trained "
                        "with (%s vs %s); metrics may suffer. Evaluate on the raw photos instead, which "
                        "go through the model's own preparation", table.root,
                        {k: used.get(k) for k in ("size", "template", "margin")},
                        {k: prepare.get(k) for k in ("size", "template", "margin")})
        return table
    if not prepare:
        return table
    return prepare_table(table, prepare, progress=progress)


def predict_table(predictors: Sequence[Any], table: SampleTable, batch_size: int = 64,
                  progress: bool = True) -> np.ndarray:
    """Probabilities of every member for every (crop) photo: float32 (members, N, L)."""
    out = np.zeros((len(predictors), len(table), len(predictors[0].labels)), np.float32)
    bar = progress_bar(len(table), "evaluate", enabled=progress)
    for start in range(0, len(table), batch_size):
        crops = [read_image(p) for p in table.paths[start:start + batch_size]]
        for k, pred in enumerate(predictors):
            out[k, start:start + len(crops)] = pred.predict_crops(crops)
        bar.update(len(crops))
    bar.close()
    return out
