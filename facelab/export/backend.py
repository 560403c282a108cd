"""The ``onnx`` backend: an exported graph run by ONNX Runtime, and where a run's export is
found (``bundle/model.onnx`` or the cache)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._deps import require
from facelab._io import read_json, write_bytes
from facelab.bundle import Bundle, Predictor, TorchPredictor
from facelab.errors import NotFound
from facelab.export.graph import ONNX_FILE, export_bytes, export_digest, read_metadata, weights_digest
from facelab.prepare import default_cache_dir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the onnx backend

def _session(model: bytes | str, threads: int = 0) -> Any:
    ort = require("onnxruntime", "onnxruntime", "running ONNX models")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # No busy-waiting between calls: on a few shared cores the spinning threads would take
    # the CPU from face detection running beside the model.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=_providers(ort))


def _providers(ort: Any) -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are present, otherwise CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have] or have


class OnnxPredictor(Predictor):
    """The ``onnx`` backend: the exported graph (preprocessing included) run by ONNX Runtime."""

    backend = "onnx"

    def __init__(self, session: Any, bundle: Bundle | dict, bundle_dir: Path | None = None) -> None:
        super().__init__(bundle, bundle_dir)
        self.session = session

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, bundle_dict: dict | None = None, threads: int = 0) -> "OnnxPredictor":
        """Load ``bundle_dir/<model.file>`` (an export folder, backend ``onnx``)."""
        bundle_dir = Path(bundle_dir)
        bundle = bundle_dict if bundle_dict is not None else read_json(bundle_dir / "bundle.json")
        path = bundle_dir / bundle["model"].get("file", ONNX_FILE)
        if not path.is_file():
            raise NotFound(f"{path}: ONNX file missing; run `facelab export` again")
        return cls(_session(str(path), threads), bundle, bundle_dir)

    @classmethod
    def from_file(cls, path: str | Path, threads: int = 0) -> "OnnxPredictor":
        """Load any ``.onnx`` written by :func:`export` (metadata read from inside the file)."""
        path = Path(path)
        return cls(_session(str(path), threads), read_metadata(path), path.parent)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.asarray(self.session.run(None, {"crops": self.spec.batch(crops)})[0], dtype=np.float32)


# --------------------------------------------------------------------------- auto backend

def cached_export(info: Bundle, create: bool = False) -> Path | None:
    """An ONNX export matching the run's weights: ``bundle/model.onnx`` (``facelab export``),
    else one in the cache (``$FACELAB_CACHE/onnx``); with ``create`` (the caller asked for
    ONNX) one is exported into the cache now. None when there is none (or the export fails)."""
    assert info.dir is not None
    bundle = info.to_dict()
    digest = weights_digest(info.dir, bundle)
    own = info.dir / ONNX_FILE
    if own.is_file() and export_digest(own) == digest:
        return own
    cached = cache_path(digest)
    if cached.is_file() or not create:
        return cached if cached.is_file() else None
    try:
        data, diff = export_bytes(TorchPredictor.from_bundle(info.dir, bundle, device="cpu"), info.dir)
    except Exception as exc:  # noqa: BLE001 - reported to the caller as "could not export"
        log.warning("%s: ONNX export failed (%s)", info.dir, str(exc).splitlines()[0][:300])
        return None
    log.info("%s: exported to ONNX (parity %.1e) -> %s", info.dir, diff, cached)
    return write_bytes(cached, data)


def cache_path(digest: str) -> Path:
    """Where exports made on request (``backend="onnx"``, and copies of ``facelab export``) live:
    ``$FACELAB_CACHE/onnx/<digest>.onnx``."""
    return default_cache_dir() / "onnx" / f"{digest}.onnx"
