"""The face-embed backend of ``facelab.load``: :class:`EmbeddingPredictor`, a
:class:`~facelab.bundle.Predictor` whose crops also get an open-set name (one embedding
pass for probabilities, names and distances)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab.bundle import FacePrediction, Predictor, read_bundle
from facelab.embed import embed_crops, template_landmarks
from facelab.errors import BundleError
from facelab.people.calibration import open_set_rule
from facelab.people.config import BACKEND, UNKNOWN
from facelab.people.gallery import Gallery
from facelab.people.model import IdentityModel, _load_head


class PersonPrediction(FacePrediction):
    """One face in a photo: the detection, the probabilities over known people, the crop,
    the decided name (``unknown`` beyond the threshold: :attr:`name`, the base's
    ``identity``) and its open-set distance."""

    def __init__(self, face: Any, probs: np.ndarray, crop: np.ndarray | None, name: str = UNKNOWN,
                 distance: float = float("nan")) -> None:
        super().__init__(face, probs, crop, identity=name, distance=float(distance))

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN


class EmbeddingPredictor(Predictor):
    """The ``face-embed`` backend of ``facelab.load``: same interface as the CNN predictor,
    plus :meth:`identify_crops` for open-set names."""

    backend = BACKEND

    def __init__(self, bundle_dir: Path, bundle: dict, model: IdentityModel) -> None:
        super().__init__(bundle, Path(bundle_dir))
        self.bundle_dir: Path = Path(bundle_dir)
        self.model = model
        self.open_set = dict(bundle.get("open_set") or {})
        self.unknown_label = self.open_set.get("unknown_label", UNKNOWN)

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, bundle_dict: dict | None = None) -> "EmbeddingPredictor":
        bundle_dir = Path(bundle_dir)
        bundle = bundle_dict if bundle_dict is not None else read_bundle(bundle_dir)[1]
        m = bundle["model"]
        if m.get("backend") != BACKEND:
            raise BundleError(f"{bundle_dir}: backend is {m.get('backend')!r}, not {BACKEND!r}")
        gallery = Gallery.load(bundle_dir / m["files"]["gallery"])
        weight, bias = _load_head(bundle_dir / m["files"]["head"]) if m["head"] == "logreg" else (None, None)
        model = IdentityModel(list(bundle["task"]["labels"]), gallery, m["head"], weight, bias,
                              int(m.get("kwargs", {}).get("knn_k", 3)),
                              float(bundle.get("open_set", {}).get("threshold", 0.6)),
                              open_set_rule(bundle))
        return cls(bundle_dir, bundle, model)

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return embed_crops(crops, template_landmarks(self.info.prepare))

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned crops -> probabilities over the known people, float32 (N, L)."""
        return self.model.probs(self.embed_crops(crops))

    def decide_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """Aligned crops -> (probabilities (N, L), names) from ONE embedding pass; a name
        is ``unknown`` when the nearest enrolled photo is beyond the calibrated threshold.
        (predict and serve use :meth:`classify_crops`, the same pass.)"""
        names, probs, _ = self.model.identify(self.embed_crops(crops))
        return probs, names

    def identify_crops(self, crops: Sequence[np.ndarray]) -> list[str]:
        """Aligned crops -> names; ``unknown`` when the nearest enrolled photo is farther
        than the calibrated threshold."""
        return self.model.identify(self.embed_crops(crops))[0]

    def classify_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str | None], list[Any]]:
        """Crops -> (probabilities, open-set names, no spread): what predict and serve use."""
        names, probs, _ = self.model.identify(self.embed_crops(crops))
        return probs, list(names), [None] * len(crops)

    def predict_faces(self, faces: Sequence[Any]) -> list[FacePrediction]:
        """Prepared faces -> one :class:`PersonPrediction` each (name and distance included)."""
        if not faces:
            return []
        names, probs, dist = self.model.identify(self.embed_crops([f.crop for f in faces]))
        return [PersonPrediction(f.face, p, f.crop, n, float(d)) for f, p, n, d in zip(faces, probs, names, dist)]


def load(run: str | Path) -> EmbeddingPredictor:
    """The face-embed predictor of a run (or bundle) folder."""
    return EmbeddingPredictor.from_bundle(*read_bundle(run))
