"""Photos in, every face with its probabilities out: the library side of ``facelab predict``.

A run's model is loaded with :func:`load_predictor`: ONNX Runtime when an up-to-date export
exists (``facelab export``; nothing is exported as a side effect), PyTorch otherwise. Faces
are found and cropped with the bundle's own :class:`~facelab.prepare.FacePipeline`, so new
photos are prepared exactly like the training photos. Photos without a face, and files
that are not readable images, are listed with a reason rather than dropped.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from facelab._progress import progress as progress_bar
from facelab.backends import CHOICES, backend_of, load
from facelab.bundle import FacePrediction, Predictor, bundle_dir_of, face_dict, prediction_dict
from facelab.bundle import face_pipeline as bundle_face_pipeline
from facelab.detect import Face
from facelab.ensemble import is_ensemble
from facelab.images import ImageError, read_bytes, read_image, upright_size
from facelab.predict.paths import IMAGE_SUFFIXES, expand_paths
from facelab.predict.report import FaceResult, PhotoResult, PredictReport, report_json
from facelab.prepare import CropCache, FacePipeline, PrepareConfig, PreparedFace

__all__ = ["BACKENDS", "IMAGE_SUFFIXES", "FacePrediction", "FaceResult", "PhotoResult", "PredictReport", "backend_of",
           "expand_paths", "face_dict", "face_pipeline", "load_predictor", "model_name", "predict",
           "predict_rgb", "prediction_dict", "report_json"]

log = logging.getLogger(__name__)

BACKENDS = CHOICES


# --------------------------------------------------------------------------- loading

def model_name(run: str | Path) -> str:
    """A short name for a run: its folder name (``runs/smile`` -> ``smile``)."""
    if is_ensemble(run):
        return Path(run).name
    bdir = bundle_dir_of(run)
    return bdir.parent.name if bdir.name == "bundle" else bdir.name


def load_predictor(run: str | Path, backend: str = "auto", threads: int = 0) -> Predictor:
    """The run's predictor (:func:`facelab.backends.load`); ``threads`` sizes ONNX Runtime's
    pool where ONNX Runtime runs it (other backends have no such option)."""
    return load(run, backend, strict=False, **({"threads": threads} if threads else {}))


def face_pipeline(bundle: dict, all_faces: bool = False) -> FacePipeline:
    """The face preparation of a ``bundle.json`` dict (:func:`facelab.bundle.face_pipeline`)."""
    return bundle_face_pipeline(bundle.get("prepare"), all_faces)


def predict_rgb(predictor: Predictor, rgb: np.ndarray, all_faces: bool = False) -> list[FacePrediction]:
    """One RGB photo -> a :class:`FacePrediction` per face (:meth:`Predictor.predict_image`)."""
    return predictor.predict_image(rgb, all_faces)


def predict(run: str | Path, inputs: Sequence[str | Path] | str | Path, backend: str = "auto",
            all_faces: bool = False, batch_photos: int = 16, progress: bool = True) -> PredictReport:
    """Predict every face in ``inputs`` (photos, folders, globs) with the run's model.

    Args:
        run: run folder or bundle folder.
        inputs: photo paths, folders (searched recursively) or glob patterns.
        backend: ``auto`` (ONNX Runtime when possible), ``onnx`` or ``torch``.
        all_faces: every face of a photo, not only the ones the bundle's ``multi_face``
            policy keeps (see :func:`face_pipeline`).
        batch_photos: photos whose faces go through the model in one call.
        progress: show a progress bar.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = expand_paths(inputs)
    predictor = load_predictor(run, backend)
    photos: list[PhotoResult] = []
    with progress_bar(len(paths), "predict", enabled=progress and len(paths) >= 2) as bar:
        for start in range(0, len(paths), batch_photos):
            chunk = paths[start:start + batch_photos]
            photos += _predict_chunk(predictor, chunk, all_faces)
            bar.update(len(chunk))
    return PredictReport(model_name(run), backend_of(predictor), predictor.task, photos)


def _predict_chunk(predictor: Any, paths: Iterable[Path], all_faces: bool) -> list[PhotoResult]:
    """Find the faces photo by photo, then run the model once on all crops of the chunk."""
    pipeline = predictor.pipeline(all_faces)
    cache = _crop_cache(pipeline.config)
    results, prepared = [], []
    for path in paths:
        result = PhotoResult(str(path))
        faces: list = []
        try:
            faces, (result.width, result.height) = _photo_faces(pipeline, cache, Path(path))
            if not faces:
                result.status, result.reason = "no_face", "no face found"
        except ImageError as exc:
            result.status, result.reason = "unreadable", exc.reason
            log.warning("skipped %s", exc)
        results.append(result)
        prepared.append(faces)
    crops = [f.crop for faces in prepared for f in faces]
    probs, names, spreads = predictor.classify_crops(crops) if crops else ([], [], [])
    rows = iter(zip(probs, names, spreads))
    for result, faces in zip(results, prepared):
        result.faces = [FacePrediction(f.face, p, identity=n, spread=s) for f, (p, n, s) in zip(faces, rows)]
    return results


def _crop_cache(config: PrepareConfig) -> CropCache:
    return CropCache(None, config)


def _photo_faces(pipeline: Any, cache: Any, path: Path) -> tuple[list, tuple[int, int]]:
    """A photo's prepared faces and its (width, height), the way training prepared it.

    Lossless crops (``format="png"``, identity runs) of a photo that ``facelab prepare``
    or training already prepared with this config are read from the crop cache: no
    detection, and exactly the crop detection would give. Any other photo goes through
    :meth:`~facelab.prepare.FacePipeline.process_file`, the training path (a cached JPEG
    crop is not used: it carries one more JPEG round than ``predict_image``'s crop).
    predict only reads the cache, it never adds to it.
    """
    import hashlib

    data = read_bytes(path)
    size = upright_size(data)
    hit = cache.load(hashlib.sha256(data).hexdigest()) if pipeline.config.format == "png" else None
    if hit is not None and hit.status in ("kept", "no_face"):
        try:
            return [PreparedFace(Face.from_dict(d), read_image(c)) for d, c in zip(hit.faces, hit.crops)], size
        except ImageError as exc:  # a damaged cache entry: prepare the photo again
            log.debug("%s: cached crop unreadable (%s); detecting again", path, exc)
    return pipeline.process_file(data, str(path))[1], size
