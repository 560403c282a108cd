"""Model bundles: everything needed to predict, without the training code's state.

``runs/NAME/bundle/`` holds ``bundle.json`` (model, task, input size, mean/std, face
preparation, training summary; see docs/ARCHITECTURE.md) and the weights.
:func:`load` turns a run folder or a bundle folder into a predictor; the bundle's
``model.backend`` picks the predictor class from :data:`BACKENDS` (imported lazily, so
loading an ONNX or face-embed bundle never needs the others' dependencies).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from facelab._io import read_json, save_torch, write_json
from facelab.bundle.spec import InputSpec, resize_crops
from facelab.tasks import Task

__all__ = ["InputSpec", "FacePrediction", "Predictor", "TorchPredictor", "load", "read_bundle", "resize_crops"]

log = logging.getLogger(__name__)

FORMAT = 1
BUNDLE_DIR = "bundle"
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"

# bundle["model"]["backend"] -> "module:Class" with a from_bundle(bundle_dir, bundle_dict) classmethod
BACKENDS: dict[str, str] = {
    "torch": "facelab.bundle:TorchPredictor",
    "face-embed": "facelab.people:EmbeddingPredictor",
    "onnx": "facelab.export:OnnxPredictor",
}


class Predictor(Protocol):
    """What every backend offers (see docs/ARCHITECTURE.md)."""

    task: Task
    labels: list[str]
    bundle: dict

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...

    def predict_image(self, image: np.ndarray | str | Path) -> list[Any]: ...


@dataclass
class FacePrediction:
    """One face in a photo: the detection (original-photo coordinates), the probabilities
    per label (float32, len(labels)) and the aligned crop the model saw."""

    face: Any
    probs: np.ndarray
    crop: np.ndarray
    spread: np.ndarray | None = None
    """Ensembles: the members' standard deviation per label; None for a single model."""


# --------------------------------------------------------------------------- files

def bundle_dir_of(run_or_bundle: str | Path) -> Path:
    """``runs/NAME`` or ``runs/NAME/bundle`` -> the folder holding ``bundle.json``."""
    path = Path(run_or_bundle).expanduser()
    for cand in (path, path / BUNDLE_DIR):
        if (cand / BUNDLE_FILE).is_file():
            return cand
    raise FileNotFoundError(f"{path}: no {BUNDLE_FILE} in it or in {path / BUNDLE_DIR}; pass a run folder "
                            f"written by `facelab train` (runs/NAME) or its bundle/ folder")


def read_bundle(run_or_bundle: str | Path) -> tuple[Path, dict]:
    """(bundle folder, bundle dict) of a run or bundle folder."""
    bdir = bundle_dir_of(run_or_bundle)
    bundle = read_json(bdir / BUNDLE_FILE)
    if not isinstance(bundle, dict) or "model" not in bundle or "task" not in bundle:
        raise ValueError(f"{bdir / BUNDLE_FILE}: not a facelab bundle (no 'model'/'task' entries)")
    return bdir, bundle


def make_bundle(model: str, task: Task, size: int, mean: Sequence[float], std: Sequence[float],
                prepare: dict | None, train: dict | None = None, kwargs: dict | None = None,
                backend: str = "torch") -> dict:
    """The bundle.json dict of the contract."""
    return {"format": FORMAT,
            "model": {"backend": backend, "name": model, "kwargs": dict(kwargs or {}), "weights": WEIGHTS_FILE},
            "task": task.to_dict(),
            "input": {"size": int(size), "mean": [float(m) for m in mean], "std": [float(s) for s in std]},
            "prepare": prepare,
            "train": dict(train or {})}


def save_bundle(bundle_dir: str | Path, bundle: dict, state_dict: dict | None = None) -> Path:
    """Write ``weights.pt`` (when given) then ``bundle.json``, each atomically; the json is
    written last so a bundle.json always points at complete weights."""
    bdir = Path(bundle_dir)
    if state_dict is not None:
        save_torch(bdir / bundle["model"].get("weights", WEIGHTS_FILE), state_dict)
    write_json(bdir / BUNDLE_FILE, bundle)
    return bdir


# --------------------------------------------------------------------------- the torch backend

class TorchPredictor:
    """The PyTorch backend: rebuilds the network from the bundle and runs it."""

    backend = "torch"

    def __init__(self, model: Any, bundle: dict, bundle_dir: Path | None = None, device: str = "cpu") -> None:
        self.model = model
        self.bundle = bundle
        self.bundle_dir = bundle_dir
        self.device = device
        self.task = Task.from_dict(bundle["task"])
        self.labels = list(self.task.labels)
        self.size = int(bundle["input"]["size"])
        self.batch_size = 64
        self._pipeline: Any = None

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, bundle_dict: dict | None = None,
                    device: str | None = None) -> "TorchPredictor":
        import torch

        from facelab.models import create_model

        bundle_dir = Path(bundle_dir)
        bundle = bundle_dict if bundle_dict is not None else read_bundle(bundle_dir)[1]
        task = Task.from_dict(bundle["task"])
        m = bundle["model"]
        model = create_model(m["name"], task.num_outputs, pretrained=False, **m.get("kwargs", {}))
        weights = bundle_dir / m.get("weights", WEIGHTS_FILE)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the bundle's weights are missing; train the run again")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device).eval(), bundle, bundle_dir, device)

    def _tensor(self, batch: np.ndarray) -> Any:
        import torch

        inp = self.bundle["input"]
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(inp["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(inp["std"], device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned RGB uint8 crops -> probabilities, float32 (N, len(labels))."""
        import torch

        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                batch = resize_crops(crops[i:i + self.batch_size], self.size)
                out.append(self.task.activate(self.model(self._tensor(batch)).float()).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def predict_image(self, image: np.ndarray | str | Path) -> list[FacePrediction]:
        """A photo (RGB array or path) -> one prediction per face found by the bundle's
        face preparation (the same crops as training)."""
        from facelab.prepare import FacePipeline

        if self._pipeline is None:
            self._pipeline = FacePipeline(self.bundle.get("prepare"))
        faces = self._pipeline.process_image(image)
        probs = self.predict_crops([f.crop for f in faces])
        return [FacePrediction(f.face, p, f.crop) for f, p in zip(faces, probs)]


# --------------------------------------------------------------------------- load

def backend_class(name: str) -> Any:
    """The predictor class registered for backend ``name`` (imported on first use)."""
    target = BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown bundle backend {name!r}; valid: {', '.join(BACKENDS)}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def load(run_or_bundle_dir: str | Path, **kwargs: Any) -> Predictor:
    """A run folder (``runs/NAME``) or bundle folder -> its predictor (any backend). An
    ensemble folder (``ensemble.json``) gives one predictor answering with the members'
    mean and spread (:class:`facelab.ensemble.EnsemblePredictor`)."""
    from facelab.ensemble import is_ensemble, load_ensemble

    if is_ensemble(run_or_bundle_dir):
        return load_ensemble(run_or_bundle_dir, lambda member: load(member, **kwargs))
    bdir, bundle = read_bundle(run_or_bundle_dir)
    if int(bundle.get("format", FORMAT)) > FORMAT:
        raise ValueError(f"{bdir}: bundle format {bundle['format']} is newer than this facelab "
                         f"understands ({FORMAT}); upgrade facelab")
    backend = bundle["model"].get("backend", "torch")
    cls = backend_class(backend)
    _check_options(cls.from_bundle, kwargs, f"{bdir} ({backend} backend)")
    return cls.from_bundle(bdir, bundle, **kwargs)


def _check_options(factory: Any, options: dict[str, Any], what: str) -> None:
    """Refuse options the backend's loader does not take, naming the ones it does."""
    import inspect

    valid = [n for n in inspect.signature(factory).parameters if n not in ("bundle_dir", "bundle_dict")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{what}: option(s) {', '.join(unknown)} not understood; valid: "
                         f"{', '.join(valid) or 'none'}")
