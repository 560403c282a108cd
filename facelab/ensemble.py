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
from facelab.bundle import Predictor
from facelab.errors import DataError

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
        raise DataError(f"{root / ENSEMBLE_FILE}: no 'members' listed")
    return [m if m.is_absolute() else (root / m if (root / m).exists() else Path(m)) for m in map(Path, names)], spec


class EnsemblePredictor(Predictor):
    """Several predictors of one task, answering as one: mean and spread per label."""

    def __init__(self, members: Sequence[Predictor], root: Path, thresholds: Sequence[float] | None = None) -> None:
        if not members:
            raise DataError(f"{root}: an ensemble needs at least one member")
        first = members[0]
        labels = [list(m.labels) for m in members]
        if any(lab != labels[0] for lab in labels):
            raise DataError(f"{root}: members predict different labels; they cannot be averaged")
        info = first.info.with_thresholds(thresholds) if thresholds else first.info
        super().__init__(info, root)
        self.members = list(members)
        self.root = root
        self.backend = f"ensemble of {len(members)} ({first.backend})"  # type: ignore[misc]

    def predict_crops_spread(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Crops -> (mean probabilities, standard deviation across members), both (N, L)."""
        probs = np.stack([m.predict_crops(crops) for m in self.members])
        return probs.mean(0).astype(np.float32), probs.std(0).astype(np.float32)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_crops_spread(crops)[0]

    def classify_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str | None], list[Any]]:
        mean, spread = self.predict_crops_spread(crops)
        return mean, [None] * len(crops), list(spread)


def load_ensemble(root: str | Path, load_member: Callable[[Path], Any]) -> EnsemblePredictor:
    """``root/ensemble.json`` -> an :class:`EnsemblePredictor` whose members ``load_member``
    builds (any backend); thresholds tuned on the ensemble (``facelab evaluate``) apply."""
    members, spec = read_members(root)
    return EnsemblePredictor([load_member(m) for m in members], Path(root), spec.get("thresholds"))
