"""``facelab.load(run)``: a run folder, bundle folder, export folder or ensemble -> its predictor.

The registry maps a bundle's ``model.backend`` to the predictor class that runs it; each
class takes its own options (``device`` for PyTorch, ``threads`` for ONNX Runtime), checked
before anything loads. ``backend`` picks how a PyTorch run is run:

- ``"torch"`` (default): PyTorch, the bundle's own weights;
- ``"onnx"``: ONNX Runtime on the run's export (``bundle/model.onnx`` from ``facelab export``
  when it matches the weights, else exported now into the cache ``$FACELAB_CACHE/onnx``);
- ``"auto"``: ONNX Runtime when an up-to-date export exists, PyTorch otherwise. Nothing is
  exported as a side effect.

face-embed runs, ONNX export folders and ensembles always use their own backend.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from facelab.bundle import Bundle, Predictor, TorchPredictor, bundle_dir_of
from facelab.ensemble import is_ensemble, load_ensemble
from facelab.errors import ConfigError
from facelab.export import OnnxPredictor, cached_export
from facelab.people import EmbeddingPredictor

__all__ = ["BACKENDS", "CHOICES", "load", "backend_of"]

log = logging.getLogger(__name__)

#: bundle.json ``model.backend`` -> the predictor class that runs it.
BACKENDS: dict[str, Any] = {"torch": TorchPredictor, "onnx": OnnxPredictor, "face-embed": EmbeddingPredictor}
#: What ``load(run, backend=...)`` accepts.
CHOICES = ("torch", "onnx", "auto")


def load(run: str | Path, backend: str = "torch", **options: Any) -> Predictor:
    """The run's predictor (see the module docstring for ``backend``). ``options`` go to the
    backend's loader: ``device`` (PyTorch), ``threads`` (ONNX Runtime)."""
    if backend not in CHOICES:
        raise ConfigError(f"unknown backend {backend!r}; valid: {', '.join(CHOICES)}")
    if is_ensemble(run):
        return load_ensemble(run, lambda member: load(member, backend, **options))
    info = Bundle.read(run)
    cls = BACKENDS.get(info.model.backend)
    if cls is None:
        raise ConfigError(f"{info.dir}: unknown bundle backend {info.model.backend!r}; valid: {', '.join(BACKENDS)}")
    if cls is TorchPredictor and backend != "torch":
        path = cached_export(info, create=backend == "onnx")
        if path is not None:
            _check_options(OnnxPredictor.from_file, options, f"{info.dir} (onnx backend)")
            return OnnxPredictor.from_file(path, **options)
        if backend == "onnx":
            raise ConfigError(f"{info.dir}: could not export to ONNX (see the log); use --backend torch")
        options = _for_torch(options)
    _check_options(cls.from_bundle, options, f"{info.dir} ({info.model.backend} backend)")
    return cls.from_bundle(bundle_dir_of(run), None, **options)


def backend_of(predictor: Any) -> str:
    """The backend a predictor runs on (``torch``, ``onnx``, ``face-embed``, ``ensemble``)."""
    return str(getattr(predictor, "backend", "") or predictor.info.model.backend)


def _for_torch(options: dict[str, Any]) -> dict[str, Any]:
    """``auto`` fell back to PyTorch: ONNX Runtime's options (``threads``) do not apply."""
    valid = inspect.signature(TorchPredictor.from_bundle).parameters
    dropped = sorted(set(options) - set(valid))
    if dropped:
        log.debug("no ONNX export: running PyTorch; ignoring %s", ", ".join(dropped))
    return {k: v for k, v in options.items() if k in valid}


def _check_options(factory: Any, options: dict[str, Any], what: str) -> None:
    """Refuse options the backend's loader does not take, naming the ones it does."""
    valid = [n for n in inspect.signature(factory).parameters if n not in ("bundle_dir", "bundle_dict", "path")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{what}: option(s) {', '.join(unknown)} not understood; valid: {', '.join(valid) or 'none'}")
