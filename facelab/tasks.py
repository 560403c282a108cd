"""The learning task as a small value object: loss, activation, decisions, metrics.

Everything downstream (training, evaluation, prediction, export, serving) asks the
``Task`` instead of branching on "binary / multi-class / multi-label" itself.

Output convention (what :meth:`Task.activate` returns and what every predictor reports):
probabilities of shape (N, len(labels)).

* ``multiclass``: softmax over the classes; rows sum to 1.
* ``binary``: two labels ``[negative, positive]``; the network has ONE logit and the
  probabilities are ``[1 - p, p]``; rows sum to 1. ``thresholds[0]`` is the decision
  threshold on ``p``.
* ``multilabel``: one independent sigmoid per attribute; ``thresholds`` per attribute.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facelab.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from facelab.data import SampleTable

TASK_KINDS = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class Task:
    """What is learned, and how outputs turn into decisions.

    Attributes:
        kind: one of :data:`TASK_KINDS`.
        labels: output label names; for ``binary`` exactly ``[negative, positive]``.
        thresholds: decision thresholds on the positive probability: one for ``binary``,
            one per attribute for ``multilabel``, empty for ``multiclass`` (argmax).
    """

    kind: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"task kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.kind == "binary" and len(self.labels) != 2:
            raise DataError(f"a binary task has exactly 2 labels, got {list(self.labels)}")
        if self.kind == "multiclass" and len(self.labels) < 2:
            raise DataError("a multiclass task needs at least 2 classes")
        if self.kind == "multilabel" and not self.labels:
            raise DataError("a multilabel task needs at least 1 attribute")
        want = self.num_thresholds
        if not self.thresholds and want:
            object.__setattr__(self, "thresholds", (0.5,) * want)
        if len(self.thresholds) != want:
            raise DataError(f"{self.kind} task with {len(self.labels)} labels needs {want} "
                             f"threshold(s), got {len(self.thresholds)}")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))

    # ------------------------------------------------------------------ shapes
    @property
    def num_outputs(self) -> int:
        """Number of network logits."""
        return 1 if self.kind == "binary" else len(self.labels)

    @property
    def num_thresholds(self) -> int:
        return {"binary": 1, "multiclass": 0, "multilabel": len(self.labels)}[self.kind]

    # ------------------------------------------------------------------ torch side
    def loss(self, weight: "torch.Tensor | None" = None) -> "torch.nn.Module":
        """The training loss. ``weight``: class weights (multiclass) or ``pos_weight``
        (binary: shape (1,), multilabel: one per attribute) for imbalanced data."""
        import torch.nn as nn

        if self.kind == "multiclass":
            return nn.CrossEntropyLoss(weight=weight)
        return nn.BCEWithLogitsLoss(pos_weight=weight)

    def target(self, labels: "torch.Tensor") -> "torch.Tensor":
        """Dataset labels -> the tensor the loss expects (float for BCE, long for CE)."""
        if self.kind == "multiclass":
            return labels.long()
        if self.kind == "binary":
            return labels.float().reshape(-1, 1)
        return labels.float()

    def activate(self, logits: "torch.Tensor") -> "torch.Tensor":
        """Logits (N, num_outputs) -> probabilities (N, len(labels)); ONNX-exportable."""
        import torch

        if self.kind == "multiclass":
            return torch.softmax(logits, dim=1)
        p = torch.sigmoid(logits)
        if self.kind == "binary":
            return torch.cat([1 - p, p], dim=1)
        return p

    # ------------------------------------------------------------------ numpy side
    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities (N, L) -> decisions: class index (N,) for binary/multiclass,
        0/1 matrix (N, L) for multilabel."""
        probs = np.asarray(probs)
        if self.kind == "multiclass":
            return probs.argmax(axis=1)
        if self.kind == "binary":
            return (probs[:, 1] >= self.thresholds[0]).astype(np.int64)
        return (probs >= np.asarray(self.thresholds)[None, :]).astype(np.uint8)

    def with_thresholds(self, thresholds: Sequence[float]) -> "Task":
        return Task(self.kind, self.labels, tuple(thresholds))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"], d["thresholds"] = list(self.labels), list(self.thresholds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        return cls(d["kind"], tuple(d["labels"]), tuple(d.get("thresholds", ())))


def infer_task(table: "SampleTable", kind: str | None = None) -> Task:
    """The task a sample table implies, or ``kind`` when the user overrides it.

    classes: 2 -> binary, more -> multiclass. attributes: 1 -> binary
    (``[not_X, X]``), more -> multilabel.
    """
    if kind is not None and kind not in TASK_KINDS:
        raise ConfigError(f"task must be one of {TASK_KINDS}, got {kind!r}")
    names = list(table.label_names)
    if table.kind == "classes":
        kind = kind or ("binary" if len(names) == 2 else "multiclass")
        if kind == "multilabel":
            raise ConfigError("a folder-per-class source has one label per photo; "
                             "use binary or multiclass")
        return Task(kind, tuple(names))
    kind = kind or ("binary" if len(names) == 1 else "multilabel")
    if kind == "binary":
        if len(names) != 1:
            raise ConfigError(f"a binary task takes exactly one attribute, got {names}; "
                             f"select one with --attrs")
        return Task("binary", (f"not_{names[0]}", names[0]))
    if kind == "multiclass":
        raise ConfigError("attribute labels are not mutually exclusive; use multilabel or binary")
    return Task("multilabel", tuple(names))


def targets_from_table(table: "SampleTable", task: Task) -> np.ndarray:
    """The table's labels in the task's layout: class indices (N,) for binary and
    multiclass, a 0/1 matrix (N, L) for multilabel."""
    if table.kind == "classes":
        return table.labels.astype(np.int64)
    if task.kind == "binary":
        return table.labels[:, 0].astype(np.int64)
    return table.labels.astype(np.uint8)
