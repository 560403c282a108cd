"""Model bundles: everything needed to predict, without the training code's state.

``runs/NAME/bundle/`` holds ``bundle.json`` and the weights (see docs/ARCHITECTURE.md).

- :class:`Bundle` (``file.py``): the typed ``bundle.json``; ``Bundle.read(run)`` finds and reads it.
- :class:`InputSpec` (``spec.py``): crop size and normalisation, the one preprocessing.
- :class:`Predictor` (``predictor.py``): the interface every backend implements, with
  photos -> faces -> predictions written once; :class:`TorchPredictor` is the PyTorch backend.

Loading a run with whatever backend it needs is :func:`facelab.backends.load`
(``facelab.load``), a later stage: the ONNX and face-embed backends build on this one.
"""
from __future__ import annotations

from pathlib import Path

from facelab._io import read_json
from facelab.bundle.file import BUNDLE_DIR, BUNDLE_FILE, FORMAT, WEIGHTS_FILE, Bundle, ModelRef, bundle_dir_of
from facelab.bundle.predictor import FacePrediction, Predictor, TorchPredictor, face_dict, face_pipeline, prediction_dict
from facelab.bundle.spec import InputSpec, resize_crops

__all__ = ["BUNDLE_DIR", "BUNDLE_FILE", "FORMAT", "WEIGHTS_FILE", "Bundle", "ModelRef", "InputSpec", "FacePrediction",
           "Predictor", "TorchPredictor", "bundle_dir_of", "face_dict", "face_pipeline", "prediction_dict",
           "read_bundle", "resize_crops"]


def read_bundle(run_or_bundle: str | Path) -> tuple[Path, dict]:
    """(bundle folder, ``bundle.json`` as written) of a run or bundle folder, format-checked
    (:meth:`Bundle.read` gives the typed view)."""
    bdir = bundle_dir_of(run_or_bundle)
    data = read_json(bdir / BUNDLE_FILE)
    Bundle.from_dict(data, bdir, where=str(bdir / BUNDLE_FILE))
    return bdir, data
