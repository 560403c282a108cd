"""Numbers beyond :mod:`facelab.metrics` that need the data table or the ensemble: the
evaluation's context, accuracy per subgroup, and the members' spread."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab import metrics as M
from facelab._io import read_json
from facelab.data import DataError, SampleTable
from facelab.evaluate.config import DEFAULT_SUBGROUPS, EvaluateConfig
from facelab.tasks import Task


def context(members: Sequence[Path], bundle: dict, data: str | Path, n_source: int, table: SampleTable,
             eval_table: SampleTable, config: EvaluateConfig) -> dict[str, Any]:
    train_cfg = {}
    cfg_path = members[0] / "config.json"
    if cfg_path.is_file():
        train_cfg = read_json(cfg_path)
    held_out = eval_table is not table and not table.has_splits and len(eval_table) < len(table)
    split = config.split if table.has_splits else ("valid rows held out by training" if held_out else None)
    return {"runs": [str(m) for m in members], "data": str(data), "split": split,
            "photos_in_source": n_source, "dropped_by_face_preparation": n_source - len(table),
            "evaluated": len(eval_table), "model": bundle.get("model", {}), "input": bundle.get("input", {}),
            "train": bundle.get("train", {}),
            "train_data": train_cfg.get("data") or bundle.get("train", {}).get("data"),
            "prepare": bundle.get("prepare")}


def subgroups(table: SampleTable, task: Task, probs: np.ndarray, y: np.ndarray,
               config: EvaluateConfig) -> dict[str, Any]:
    """Accuracy per value of each subgroup column, with the worst-minus-best gap."""
    columns = config.subgroups
    if columns is None:
        columns = tuple(c for c in DEFAULT_SUBGROUPS if table.kind == "attributes" and c in table.label_names)
    correct = task.decide(probs) == y
    out = {}
    for col in columns:
        out[col] = M.subgroup_accuracy(correct, subgroup_values(table, col), config.min_group)
    return out


def subgroup_values(table: SampleTable, column: str) -> list[str]:
    """The group of each row for ``column``: an attribute (``X`` / ``not_X``) or ``identity``."""
    if column == "identity":
        if not table.has_identities:
            raise DataError(f"{table.root}: no identities to group by")
        return [str(i) for i in table.identities]
    if table.kind != "attributes" or column not in table.label_names:
        valid = ["identity"] + (list(table.label_names) if table.kind == "attributes" else [])
        raise DataError(f"{table.root}: unknown subgroup column {column!r}; valid: {', '.join(valid)}")
    col = table.labels[:, table.label_names.index(column)]
    return [column if v else f"not_{column}" for v in col]


def ensemble_stats(task: Task, member_probs: np.ndarray, y: np.ndarray, members: Sequence[Path]) -> dict[str, Any]:
    std, disagree = ensemble_spread(task, member_probs)
    return {"members": [{"run": str(m), "accuracy": float(np.mean(task.decide(p) == y))}
                        for m, p in zip(members, member_probs)],
            "mean_std": float(std.mean()), "photos_with_disagreement": int((disagree > 0).sum()),
            "mean_disagreement": float(disagree.mean())}


def ensemble_spread(task: Task, member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: the members' standard deviation of the probability of the ensemble's decision,
    and the fraction of members whose decision differs from the ensemble's (multilabel: mean
    over attributes)."""
    mean = member_probs.mean(0)
    decision = task.decide(mean)
    votes = np.stack([task.decide(p) for p in member_probs])
    disagree = (votes != decision[None]).mean(0)
    std = member_probs.std(0)
    if task.kind == "multiclass":
        std = std[np.arange(len(std)), decision]
    elif task.kind == "binary":
        std = std[:, 1]
    else:
        std, disagree = std.mean(1), disagree.mean(1)
    return std, disagree
