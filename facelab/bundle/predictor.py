"""The one predictor interface every backend implements (PyTorch, ONNX Runtime, face-embed,
ensembles), and the PyTorch backend.

A backend only says how crops become probabilities (:meth:`Predictor.predict_crops`), and
identity models and ensembles what else they know about each crop
(:meth:`Predictor.classify_crops`). Photos -> faces -> predictions
(:meth:`Predictor.predict_image`) is written once, here, with the bundle's own face
preparation, so a new photo is cropped exactly like the training photos.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from facelab.bundle.file import Bundle
from facelab.bundle.spec import InputSpec
from facelab.errors import NotFound
from facelab.prepare import FacePipeline, PrepareConfig
from facelab.tasks import Task

__all__ = ["FacePrediction", "Predictor", "TorchPredictor", "face_dict", "face_pipeline", "prediction_dict"]


@dataclass
class FacePrediction:
    """One face in a photo and what the model says about it."""

    face: Any
    """:class:`facelab.detect.Face`: box, landmarks and score in original-photo coordinates."""
    probs: np.ndarray
    """float32 (len(labels),) probabilities."""
    crop: np.ndarray | None = None
    """The aligned crop the model saw (None where only the crop's predictions travel)."""
    identity: str | None = None
    """Identity models: the open-set decision (a known name or ``unknown``); else None."""
    spread: np.ndarray | None = None
    """Ensembles: the members' standard deviation per label; None for a single model."""
    distance: float | None = None
    """Identity models: the open-set score the decision was made on."""

    @property
    def name(self) -> str | None:
        """The identity decision (the name identity models have always used)."""
        return self.identity

    def to_dict(self, task: Task) -> dict[str, Any]:
        """JSON of the face and its prediction (``facelab predict``, ``facelab serve``)."""
        return {**face_dict(self.face), "prediction": prediction_dict(task, self.probs, self.identity, self.spread)}


def face_dict(face: Any) -> dict[str, Any]:
    """A detected face as JSON: box, five landmarks (pixels, 0.1 px) and the detector score."""
    return {"box": [round(float(v), 1) for v in face.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in np.asarray(face.landmarks)],
            "score": round(float(face.score), 4)}


def prediction_dict(task: Task, probs: np.ndarray, identity: str | None = None,
                    spread: np.ndarray | None = None) -> dict[str, Any]:
    """Probabilities -> ``{"probs": {label: p}, "decision": ..., "top": label}`` (JSON-ready;
    ensembles add ``"spread": {label: std across members}``).

    ``decision`` is the predicted label (binary, multiclass) or the list of present
    attributes (multilabel), using the bundle's thresholds; for an identity model it is
    the open-set ``identity`` (a known name or ``unknown``) when given.
    """
    probs = np.asarray(probs, dtype=np.float64)
    decided = task.decide(probs[None])[0]
    if identity is not None:
        decision: Any = identity
    elif task.kind == "multilabel":
        decision = [lab for lab, d in zip(task.labels, decided) if d]
    else:
        decision = task.labels[int(decided)]
    out = {"probs": {lab: round(float(p), 5) for lab, p in zip(task.labels, probs)},
           "decision": decision, "top": task.labels[int(probs.argmax())]}
    if spread is not None:
        out["spread"] = {lab: round(float(s), 5) for lab, s in zip(task.labels, spread)}
    return out


_PIPELINES: dict[str, FacePipeline] = {}
_PIPELINES_LOCK = threading.Lock()


def face_pipeline(prepare: dict | None, all_faces: bool = False) -> FacePipeline:
    """A bundle's face preparation (one shared per configuration), exactly as training used it.

    ``all_faces`` keeps every face of a photo even when the run was prepared with another
    multi-face policy; the detector then skips its fast low-resolution first pass, so
    landmarks (and crops) can differ slightly from the ones training saw."""
    config = PrepareConfig.from_dict(prepare)
    if all_faces and config.multi_face != "all":
        config = replace(config, multi_face="all")
    key = config.digest()
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = FacePipeline(config)
        return _PIPELINES[key]


class Predictor(ABC):
    """What every backend offers: ``task``, ``labels``, the input spec, crops -> probabilities,
    photos -> one :class:`FacePrediction` per face."""

    backend: ClassVar[str] = ""

    def __init__(self, bundle: Bundle | dict, bundle_dir: Path | None = None) -> None:
        info = bundle if isinstance(bundle, Bundle) else Bundle.from_dict(bundle, bundle_dir)
        self.info: Bundle = info
        """The typed bundle."""
        self.bundle: dict = bundle if isinstance(bundle, dict) else info.to_dict()
        """``bundle.json`` as written (the JSON contract; entries of newer formats kept)."""
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else info.dir
        self.task: Task = info.task
        self.labels: list[str] = list(info.task.labels)
        self.spec: InputSpec = info.input
        self.batch_size = 64

    @property
    def size(self) -> int:
        return self.spec.size

    @abstractmethod
    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned RGB uint8 crops (any size) -> probabilities, float32 (N, len(labels))."""

    def classify_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str | None], list[Any]]:
        """Crops -> (probabilities (N, L), open-set name per crop or None, members' spread per
        crop or None). Identity models and ensembles add what they know; one pass either way."""
        n = len(crops)
        return self.predict_crops(crops), [None] * n, [None] * n

    def pipeline(self, all_faces: bool = False) -> FacePipeline:
        """The bundle's face preparation (see :func:`face_pipeline`)."""
        return face_pipeline(self.info.prepare, all_faces)

    def predict_image(self, image: np.ndarray | str | Path, all_faces: bool = False) -> list[FacePrediction]:
        """A photo (RGB array or path) -> one prediction per face the bundle's face
        preparation keeps (the same crops as training)."""
        return self.predict_faces(self.pipeline(all_faces).process_image(image))

    def predict_faces(self, faces: Sequence[Any]) -> list[FacePrediction]:
        """Prepared faces (``face``, ``crop``) -> one prediction each."""
        if not faces:
            return []
        probs, names, spreads = self.classify_crops([f.crop for f in faces])
        return [FacePrediction(f.face, p, f.crop, n, s) for f, p, n, s in zip(faces, probs, names, spreads)]


class TorchPredictor(Predictor):
    """The PyTorch backend: rebuilds the network from the bundle and runs it."""

    backend = "torch"

    def __init__(self, model: Any, bundle: Bundle | dict, bundle_dir: Path | None = None, device: str = "cpu") -> None:
        super().__init__(bundle, bundle_dir)
        self.model = model
        self.device = device

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, bundle_dict: dict | None = None,
                    device: str | None = None) -> "TorchPredictor":
        import torch

        from facelab.models import create_model

        bundle_dir = Path(bundle_dir)
        info = Bundle.from_dict(bundle_dict, bundle_dir) if bundle_dict is not None else Bundle.read(bundle_dir)
        model = create_model(info.model.name, info.task.num_outputs, pretrained=False, **info.model.kwargs)
        weights = bundle_dir / info.model.weights
        if not weights.is_file():
            raise NotFound(f"{weights}: the bundle's weights are missing; train the run again")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device).eval(), bundle_dict if bundle_dict is not None else info, bundle_dir, device)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = self.spec.preprocess(self.spec.batch(crops[i:i + self.batch_size]), self.device)
                out.append(self.task.activate(self.model(x)).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)
