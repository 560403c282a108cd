"""facelab: folders of face photos in; trained, explained and served face classifiers out.

The public API is a handful of verbs, one per pipeline stage::

    import facelab
    report = facelab.prepare("photos/", "faces/")          # detect, align, crop
    run    = facelab.train("faces/", model="efficientnet_lite0")
    facelab.evaluate(run, "faces/")                         # metrics, plots, model card
    facelab.explain(run, ["me.jpg"])                        # Grad-CAM, feature maps
    facelab.export(run)                                     # ONNX + metadata
    predictor = facelab.load(run)                           # image in, probabilities out

Nothing heavy is imported here: each verb imports its stage module (and torch, OpenCV,
dlib ...) on first use.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"; resolved lazily so `import facelab` stays instant.
_API = {
    "load_source": "facelab.data:load_source",
    "prepare": "facelab.prepare:prepare",
    "inspect": "facelab.inspect:inspect",
    "collect": "facelab.collect:collect",
    "train": "facelab.train:train",
    "load": "facelab.backends:load",
    "evaluate": "facelab.evaluate:evaluate",
    "compare": "facelab.compare:compare",
    "explain": "facelab.explain:explain",
    "export": "facelab.export:export",
    "predict": "facelab.predict:predict",
    "verify": "facelab.people:verify",
    "enroll": "facelab.people:enroll",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'facelab' has no attribute {name!r}")
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """Keeps each verb a function although a stage module of the same name exists.

    Importing ``facelab.evaluate`` (the module) makes Python set ``facelab.evaluate`` to
    that module, which would turn ``facelab.evaluate(run, data)`` into "module is not
    callable" depending on import order. Stage modules stay importable by their full
    name (``from facelab.evaluate import EvaluateConfig``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
