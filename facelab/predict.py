"""Photos in, every face with its probabilities out: the library side of ``facelab predict``.

A run's model is loaded with :func:`load_predictor`: ONNX Runtime when an up-to-date export
exists (``facelab export``; nothing is exported as a side effect), PyTorch otherwise. Faces
are found and cropped with the bundle's own :class:`~facelab.prepare.FacePipeline`, so new
photos are prepared exactly like the training photos. Photos without a face, and files
that are not readable images, are listed with a reason rather than dropped.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from facelab._progress import progress as progress_bar
from facelab.backends import backend_of, load
from facelab.bundle import FacePrediction, Predictor, bundle_dir_of, face_dict, prediction_dict
from facelab.bundle import face_pipeline as bundle_face_pipeline
from facelab.detect import Face
from facelab.ensemble import is_ensemble
from facelab.errors import NotFound
from facelab.images import ImageError, read_bytes, read_image, upright_size
from facelab.prepare import CropCache, FacePipeline, PrepareConfig, PreparedFace
from facelab.tasks import Task

__all__ = ["FacePrediction", "PhotoResult", "PredictReport", "expand_paths", "face_dict", "load_predictor", "predict",
           "prediction_dict"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif")


# --------------------------------------------------------------------------- loading

def model_name(run: str | Path) -> str:
    """A short name for a run: its folder name (``runs/smile`` -> ``smile``)."""
    if is_ensemble(run):
        return Path(run).name
    bdir = bundle_dir_of(run)
    return bdir.parent.name if bdir.name == "bundle" else bdir.name


def load_predictor(run: str | Path, backend: str = "auto", threads: int = 0) -> Predictor:
    """The run's predictor (:func:`facelab.backends.load`); ``threads`` sizes ONNX Runtime's
    pool when ONNX Runtime runs it."""
    return load(run, backend, **({"threads": threads} if threads else {}))


def face_pipeline(bundle: dict, all_faces: bool = False) -> FacePipeline:
    """The face preparation of a ``bundle.json`` dict (:func:`facelab.bundle.face_pipeline`)."""
    return bundle_face_pipeline(bundle.get("prepare"), all_faces)


# --------------------------------------------------------------------------- results

FaceResult = FacePrediction  # the name predict's results have always had


@dataclass
class PhotoResult:
    """One input photo: its faces, or why there are none."""

    path: str
    status: str = "ok"
    """``ok``, ``no_face`` or ``unreadable``."""
    reason: str = ""
    faces: list[FaceResult] = field(default_factory=list)
    width: int = 0
    height: int = 0


def predict_rgb(predictor: Predictor, rgb: np.ndarray, all_faces: bool = False) -> list[FacePrediction]:
    """One RGB photo -> a :class:`FacePrediction` per face (:meth:`Predictor.predict_image`)."""
    return predictor.predict_image(rgb, all_faces)


def classify_crops(predictor: Predictor, crops: list[np.ndarray]) -> tuple[np.ndarray, list[str | None], list[Any]]:
    """Crops -> (probabilities, open-set name or None, ensemble spread or None) per crop."""
    return predictor.classify_crops(crops)


# --------------------------------------------------------------------------- many photos

def expand_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursive, image suffixes) and globs -> sorted unique photo paths.

    A name that matches nothing, a broken link and a symbolic link loop stay in the list
    (logged): predict reports each as unreadable with its reason and goes on with the other
    paths. Nothing at all to predict is an error (a typo should not silently predict nothing)."""
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found += _photos_in(path)
        elif path.is_file() or path.is_symlink():
            found.append(path)
        elif glob.has_magic(text):
            hits = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not hits:
                log.warning("%s: the pattern matches no file", text)
            found += hits
        else:
            log.warning("%s: no such file or folder", text)
            found.append(path)
    if not any(p.is_file() for p in found):
        raise NotFound(f"{', '.join(map(str, inputs))}: no photo to predict (no such file, or "
                                "nothing with an image suffix)")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(_key(p), p)
    return list(unique.values())


def _photos_in(folder: Path) -> list[Path]:
    """Image files under ``folder``; a link with an image name that leads nowhere (broken, or a
    loop) is kept, so that it is reported instead of silently dropped."""
    photos = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            photos.append(p)
        elif p.is_symlink():
            log.warning("%s: %s", p, _link_problem(p))
            photos.append(p)
    return photos


def _link_problem(path: Path) -> str:
    import errno
    import os

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        return f"broken symbolic link (its target {os.readlink(path)} is missing)"
    return "not a regular file"


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        return path.absolute()


@dataclass
class PredictReport:
    """Everything ``predict()`` found, with what is needed to read it."""

    model: str
    backend: str
    task: Task
    photos: list[PhotoResult]

    @property
    def n_faces(self) -> int:
        return sum(len(p.faces) for p in self.photos)

    def summary(self) -> str:
        from collections import Counter

        c = Counter(p.status for p in self.photos)
        return (f"{len(self.photos)} photo(s): {self.n_faces} face(s) in {c['ok']}, no face in "
                f"{c['no_face']}, unreadable {c['unreadable']} (model {self.model}, backend {self.backend})")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "task": self.task.to_dict(),
                "photos": [{"path": p.path, "status": p.status, "reason": p.reason, "width": p.width,
                            "height": p.height, "faces": [f.to_dict(self.task) for f in p.faces]}
                           for p in self.photos]}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per face (and one per photo without a face), for CSV and tables."""
        out: list[dict[str, Any]] = []
        for p in self.photos:
            if not p.faces:
                out.append({"path": p.path, "face": "", "status": p.status, "reason": p.reason})
            for i, f in enumerate(p.faces):
                pred = prediction_dict(self.task, f.probs, f.identity)
                row = {"path": p.path, "face": i, "status": p.status, "reason": "",
                       "box": " ".join(f"{v:.0f}" for v in f.face.box), "decision": _decision_text(pred)}
                row.update(pred["probs"])
                out.append(row)
        return out

    def to_csv(self) -> str:
        cols = ["path", "face", "status", "reason", "box", "decision", *self.task.labels]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()

    def table(self, top: int = 3) -> str:
        """A readable table: photo, face, box, decision and the ``top`` most likely labels."""
        lines = [f"{'photo':40s} {'face':>4s}  {'box (x0 y0 x1 y1)':20s} {'decision':24s} top probabilities"]
        for p in self.photos:
            name = _short(_printable(p.path), 40)
            if not p.faces:
                lines.append(f"{name:40s} {'-':>4s}  {p.status}: {_printable(p.reason)}")
            for i, f in enumerate(p.faces):
                pred = prediction_dict(self.task, f.probs, f.identity)
                best = sorted(pred["probs"].items(), key=lambda kv: -kv[1])[:top]
                box = " ".join(f"{v:.0f}" for v in f.face.box)
                probs = "  ".join(f"{k} {v:.2f}" for k, v in best)
                lines.append(f"{name:40s} {i:>4d}  {box:20s} {_decision_text(pred)[:24]:24s} {probs}")
        return "\n".join(lines)


def _decision_text(pred: dict[str, Any]) -> str:
    d = pred["decision"]
    return ",".join(d) if isinstance(d, list) else str(d)


def _printable(text: str) -> str:
    """``text`` on one line: a newline or another control character in a file name is shown
    escaped (``\\n``), so that it cannot break the table."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


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
    cache = CropCache(None, pipeline.config)
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


def report_json(report: PredictReport) -> str:
    return json.dumps(report.to_json(), indent=2)
