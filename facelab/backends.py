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

from facelab.bundle import Bundle, Predictor, TorchPredictor, read_bundle
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


def load(run: str | Path, backend: str = "torch", strict: bool = True, **options: Any) -> Predictor:
    """The run's predictor (see the module docstring for ``backend``). ``options`` go to the
    backend's loader: ``device`` (PyTorch), ``threads`` (ONNX Runtime). An option the chosen
    loader does not take is an error, or with ``strict=False`` (predict and serve, which size
    ONNX Runtime's pool for whichever run turns out to use it) left out."""
    if backend not in CHOICES:
        raise ConfigError(f"unknown backend {backend!r}; valid: {', '.join(CHOICES)}")
    if is_ensemble(run):
        return load_ensemble(run, lambda member: load(member, backend, strict, **options))
    bdir, raw = read_bundle(run)  # bundle.json is read once; the loader below gets it
    info = Bundle.from_dict(raw, bdir)
    cls = BACKENDS.get(info.model.backend)
    if cls is None:
        raise ConfigError(f"{info.dir}: unknown bundle backend {info.model.backend!r}; valid: {', '.join(BACKENDS)}")
    if cls is TorchPredictor and backend != "torch":
        path = cached_export(info, create=backend == "onnx")
        if path is not None:
            return OnnxPredictor.from_file(path, **_options(OnnxPredictor.from_file, options, strict, f"{info.dir} (onnx)"))
        if backend == "onnx":
            raise ConfigError(f"{info.dir}: could not export to ONNX (see the log); use --backend torch")
        strict = False  # auto fell back to PyTorch: ONNX Runtime's options do not apply
    options = _options(cls.from_bundle, options, strict, f"{info.dir} ({info.model.backend} backend)")
    return cls.from_bundle(bdir, raw, **options)


def backend_of(predictor: Any) -> str:
    """The backend a predictor runs on (``torch``, ``onnx``, ``face-embed``, ``ensemble``)."""
    return str(getattr(predictor, "backend", "") or predictor.info.model.backend)


def _options(factory: Any, options: dict[str, Any], strict: bool, what: str) -> dict[str, Any]:
    """The options the backend's loader takes; the others are refused (naming the valid ones)
    or, not ``strict``, left out."""
    valid = [n for n in inspect.signature(factory).parameters if n not in ("bundle_dir", "bundle_dict", "path")]
    unknown = sorted(set(options) - set(valid))
    if unknown and strict:
        raise ConfigError(f"{what}: option(s) {', '.join(unknown)} not understood; valid: {', '.join(valid) or 'none'}")
    if unknown:
        log.debug("%s: not used by this backend: %s", what, ", ".join(unknown))
    return {k: v for k, v in options.items() if k in valid}
