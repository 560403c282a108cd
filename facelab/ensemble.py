"""Ensembles: ``facelab train --ensemble K`` writes ``NAME/m0..m{K-1}`` and ``NAME/ensemble.json``.

:class:`EnsemblePredictor` is what ``facelab.load``, ``facelab predict`` and ``facelab serve``
return for such a folder: the members' mean probability per label, and their spread
(standard deviation across members), so a new photo gets a confidence band, not one number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facelab._io import read_json
from facelab.bundle import FacePrediction
from facelab.tasks import Task

ENSEMBLE_FILE = "ensemble.json"


def is_ensemble(path: str | Path) -> bool:
    return (Path(path).expanduser() / ENSEMBLE_FILE).is_file()


def read_members(root: str | Path) -> tuple[list[Path], dict]:
    """The member run folders listed in ``root/ensemble.json`` (relative to it or absolute)
    and the manifest itself."""
    root = Path(root).expanduser()
    spec = read_json(root / ENSEMBLE_FILE)
    names = spec.get("members") or []
    if not names:
        raise ValueError(f"{root / ENSEMBLE_FILE}: no 'members' listed")
    return [m if m.is_absolute() else (root / m if (root / m).exists() else Path(m)) for m in map(Path, names)], spec


class EnsemblePredictor:
    """Several predictors of one task, answering as one: mean and spread per label."""

    def __init__(self, members: Sequence[Any], root: Path, thresholds: Sequence[float] | None = None) -> None:
        if not members:
            raise ValueError(f"{root}: an ensemble needs at least one member")
        first = members[0]
        labels = [list(m.labels) for m in members]
        if any(lab != labels[0] for lab in labels):
            raise ValueError(f"{root}: members predict different labels; they cannot be averaged")
        self.members = list(members)
        self.root = root
        self.task: Task = first.task.with_thresholds(thresholds) if thresholds else first.task
        self.labels = list(self.task.labels)
        self.bundle = {**first.bundle, "task": self.task.to_dict()}
        self.backend = f"ensemble of {len(members)} ({getattr(first, 'backend', 'torch')})"
        self._pipeline: Any = None  # built on first predict_image, like TorchPredictor's

    def predict_crops_spread(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Crops -> (mean probabilities, standard deviation across members), both (N, L)."""
        probs = np.stack([m.predict_crops(crops) for m in self.members])
        return probs.mean(0).astype(np.float32), probs.std(0).astype(np.float32)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_crops_spread(crops)[0]

    def predict_image(self, image: np.ndarray | str | Path) -> list[FacePrediction]:
        from facelab.prepare import FacePipeline

        if self._pipeline is None:
            self._pipeline = FacePipeline(self.bundle.get("prepare"))
        faces = self._pipeline.process_image(image)
        mean, spread = self.predict_crops_spread([f.crop for f in faces])
        return [FacePrediction(f.face, p, f.crop, s) for f, p, s in zip(faces, mean, spread)]


def load_ensemble(root: str | Path, load_member: Callable[[Path], Any]) -> EnsemblePredictor:
    """``root/ensemble.json`` -> an :class:`EnsemblePredictor` whose members ``load_member``
    builds (any backend); thresholds tuned on the ensemble (``facelab evaluate``) apply."""
    members, spec = read_members(root)
    return EnsemblePredictor([load_member(m) for m in members], Path(root), spec.get("thresholds"))
