"""Photos in, every face with its probabilities out: the library side of ``facelab predict``.

A run's model is loaded with :func:`load_predictor`: ONNX Runtime when an export exists
(or can be made on the fly, cached in ``$FACELAB_CACHE/onnx``), PyTorch otherwise. Faces
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from facelab.tasks import Task

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif")


# --------------------------------------------------------------------------- loading

def model_name(run: str | Path) -> str:
    """A short name for a run: its folder name (``runs/smile`` -> ``smile``)."""
    from facelab.bundle import bundle_dir_of
    from facelab.ensemble import is_ensemble

    if is_ensemble(run):
        return Path(run).name
    bdir = bundle_dir_of(run)
    return bdir.parent.name if bdir.name == "bundle" else bdir.name


def load_predictor(run: str | Path, backend: str = "auto", threads: int = 0) -> Any:
    """The run's predictor. ``auto``: ONNX Runtime when the run is a PyTorch run that
    exports cleanly, else PyTorch; ``onnx``/``torch`` force one (``onnx`` fails loudly).
    face-embed and ONNX-bundle runs always use their own backend."""
    from facelab.bundle import read_bundle
    from facelab.ensemble import is_ensemble, load_ensemble
    from facelab.export import OnnxPredictor, cached_export

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if is_ensemble(run):
        return load_ensemble(run, lambda member: load_predictor(member, backend, threads))
    bdir, bundle = read_bundle(run)
    kind = bundle["model"].get("backend", "torch")
    if kind == "onnx":
        return OnnxPredictor.from_bundle(bdir, bundle, threads)
    if kind == "torch" and backend != "torch":
        path = cached_export(bdir, bundle)
        if path is not None:
            return OnnxPredictor.from_file(path, threads)
        if backend == "onnx":
            raise ValueError(f"{bdir}: could not export to ONNX (see the log); use --backend torch")
    from facelab.bundle import load

    return load(bdir)


def backend_of(predictor: Any) -> str:
    return str(getattr(predictor, "backend", None) or predictor.bundle["model"].get("backend", "torch"))


_PIPELINES: dict[str, Any] = {}


def face_pipeline(bundle: dict, all_faces: bool = False) -> Any:
    """The bundle's face preparation (shared per config), exactly as training used it.

    ``all_faces`` keeps every face of a photo even when the run was prepared with
    ``multi_face="largest"``; the detector then skips its fast low-resolution first pass,
    so landmarks (and crops) can differ slightly from the ones training saw."""
    from facelab.prepare import FacePipeline, PrepareConfig

    config = PrepareConfig.from_dict(bundle.get("prepare"))
    if all_faces and config.multi_face != "all":
        config = replace(config, multi_face="all")
    key = config.digest()
    if key not in _PIPELINES:
        _PIPELINES[key] = FacePipeline(config)
    return _PIPELINES[key]


# --------------------------------------------------------------------------- results

@dataclass
class FaceResult:
    """One face: where it is and what the model says."""

    face: Any
    """:class:`facelab.detect.Face` in original-photo coordinates."""
    probs: np.ndarray
    """float32 (len(labels),) probabilities."""
    identity: str | None = None
    """Open-set decision of an identity model (a known name or ``unknown``), else None."""
    spread: np.ndarray | None = None
    """Ensembles: standard deviation of the members' probabilities per label."""

    def to_dict(self, task: Task) -> dict[str, Any]:
        return {**face_dict(self.face), "prediction": prediction_dict(task, self.probs, self.identity, self.spread)}


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


def predict_rgb(predictor: Any, rgb: np.ndarray, all_faces: bool = False) -> list[FaceResult]:
    """One RGB photo -> a :class:`FaceResult` per face (largest first)."""
    prepared = face_pipeline(predictor.bundle, all_faces).process(rgb)
    if not prepared:
        return []
    probs, names, spreads = classify_crops(predictor, [p.crop for p in prepared])
    return [FaceResult(p.face, pr, n, s) for p, pr, n, s in zip(prepared, probs, names, spreads)]


def classify_crops(predictor: Any, crops: list[np.ndarray]) -> tuple[np.ndarray, list[str | None], list[Any]]:
    """Crops -> (probabilities (N, L), open-set identity per crop or None, ensemble spread
    per crop or None).

    Identity models (``decide_crops``) say ``unknown`` beyond their calibrated threshold,
    from the same embedding pass; ensembles give the members' standard deviation."""
    if hasattr(predictor, "decide_crops"):
        probs, names = predictor.decide_crops(crops)
        return probs, list(names), [None] * len(crops)
    if hasattr(predictor, "predict_crops_spread"):
        probs, spread = predictor.predict_crops_spread(crops)
        return probs, [None] * len(crops), list(spread)
    return predictor.predict_crops(crops), [None] * len(crops), [None] * len(crops)


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
        raise FileNotFoundError(f"{', '.join(map(str, inputs))}: no photo to predict (no such file, or "
                                "nothing with an image suffix)")
    seen: set[Path] = set()
    return [p for p in found if not (_key(p) in seen or seen.add(_key(p)))]


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
        out = []
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
    from facelab._progress import progress as progress_bar

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
    from facelab.images import ImageError

    pipeline = face_pipeline(predictor.bundle, all_faces)
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
    probs, names, spreads = classify_crops(predictor, crops) if crops else ([], [], [])
    rows = iter(zip(probs, names, spreads))
    for result, faces in zip(results, prepared):
        result.faces = [FaceResult(f.face, *next(rows)) for f in faces]
    return results


def _crop_cache(config: Any) -> Any:
    from facelab.prepare import CropCache

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

    from facelab.detect import Face
    from facelab.images import ImageError, read_bytes, read_image, upright_size
    from facelab.prepare import PreparedFace

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
