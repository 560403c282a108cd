"""Face preparation: photos -> detected, aligned, cropped faces (THE crop every stage uses).

* :class:`PrepareConfig` says how (detector, template, size, margin, policies ...); it is
  stored in ``facelab_prepared.json`` and in every run bundle, so predict and serve crop
  new photos exactly like the training photos were cropped.
* :class:`FacePipeline` turns one RGB photo into :class:`PreparedFace` crops.
* :func:`prepare` does a whole source (folder tree, CelebA, CSV) into an output folder with
  the same layout and labels, a manifest and a report; :func:`prepare_table` does a
  :class:`~facelab.data.SampleTable` into cached crops (used by training on raw photos).

Work is cached by content: ``sha256(file bytes)`` + a hash of the config. A re-run reads
the cache (near-instant) and an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from facelab._io import DiskFullError, disk_full_as_error, fit_name, link_or_copy, os_reason, write_bytes, write_json, write_text
from facelab.data import (CELEBA_ATTR_FILE, CELEBA_IDENTITY_FILE, CELEBA_PARTITION_FILE, INCOMPLETE_MARKER,
                          PREPARED_MANIFEST, SampleTable, clear_incomplete, load_source, mark_incomplete)
from facelab.detect import Face, cached_detector, check_detector_options, is_builtin_detector, list_detectors
from facelab.images import ImageError, read_image

log = logging.getLogger(__name__)

#: Bump when the pipeline's output changes for the same config (invalidates caches).
PIPELINE_VERSION = 2  # 2: smaller refinement window, min_face in original pixels
MULTI_FACE_POLICIES = ("largest", "main", "all", "skip")
ONE_FACE_POLICIES = ("largest", "main")  # keep one face: the fast low-resolution first pass applies
LIGHT_MODES = ("none", "clahe")
BACKGROUND_MODES = ("keep", "blur", "grey")
CROP_FORMATS = ("jpg", "png")
STATUSES = ("kept", "no_face", "several_faces", "unreadable")
REPORT_DIR = ".facelab_report"


REFINE_FACE = 1.6
"""Refinement re-detects a small face at about this many times ``refine_below`` px wide ..."""
REFINE_WINDOW = 1.6
"""... in a square window this many face sides across. Measured on the 40 uncropped
celeba-wild-mini photos (bench/prepare.py): 1.6 / 1.6 (a ~100 px window) is 1.5x faster
than 2.5 / 2.0 (~200 px; yuface's time grows with the pixels) and its crops are as close to
the official aligned ones (landmarks 3.6 vs 4.1 px mean, SSIM 0.50 vs 0.49)."""
PROCESSES_FROM = 200
"""run_files(processes=None) uses worker processes from this many photos on: yuface holds
the GIL, so threads barely overlap detection (celeba-mini: ~1.3x faster in processes), but
starting them costs ~0.3 s."""


@dataclass(frozen=True)
class PrepareConfig:
    """How faces are found and cropped. JSON round-trip: :meth:`to_dict` / :meth:`from_dict`."""

    detector: str = "yuface"
    """Detector registry name (``facelab.detect.list_detectors()``)."""
    detector_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options for the detector (e.g. haar: scale_factor, min_neighbors, min_size)."""
    size: int = 224
    """Side of the square output crop, in pixels."""
    template: str = "celeba"
    """Alignment template: ``celeba`` (CelebA framing, keeps hair/hats/jewellery) or ``tight``."""
    margin: float = 0.0
    """Extra context on each side, as a fraction of the template frame (0.1 = 10 %)."""
    multi_face: str = "largest"
    """Several faces in a photo: keep the ``largest``, the ``main`` one (the photographed
    person: see :func:`main_face`; the default of identity work), keep ``all``, or ``skip``
    the photo."""
    light: str = "none"
    """Light balancing of the crop: ``none`` or ``clahe`` (CLAHE on luminance)."""
    background: str = "keep"
    """Outside the face: ``keep``, ``blur`` or ``grey``."""
    detect_max_side: int = 640
    """Photos larger than this (longest side) are downscaled for detection; crops are cut
    from the full-resolution original."""
    fast_side: int = 128
    """With ``multi_face="largest"`` or ``"main"``, detect first on the photo shrunk to this longest side
    (several times faster) and fall back to ``detect_max_side`` only when no face is found.
    0 turns the fast first pass off."""
    refine_below: int = 40
    """Faces the detector saw narrower than this (px) get their landmarks re-detected on a
    face-centred window (one more detector call), for precise alignment. 0 = off."""
    min_face: int = 24
    """Faces whose box is narrower than this (pixels in the original) are ignored."""
    format: str = "jpg"
    """Crop file format: ``jpg`` (quality 95) or ``png`` (lossless)."""

    def __post_init__(self) -> None:
        from facelab.align import list_templates

        if self.detector not in list_detectors():
            raise ValueError(f"unknown detector {self.detector!r}; valid: {', '.join(list_detectors())}")
        if self.template not in list_templates():
            raise ValueError(f"unknown template {self.template!r}; valid: {', '.join(list_templates())}")
        _check_choice("multi_face", self.multi_face, MULTI_FACE_POLICIES)
        _check_choice("light", self.light, LIGHT_MODES)
        _check_choice("background", self.background, BACKGROUND_MODES)
        _check_choice("format", self.format, CROP_FORMATS)
        if not 16 <= self.size <= 2048:
            raise ValueError(f"size must be between 16 and 2048 pixels, got {self.size}")
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"margin must be between 0 and 1, got {self.margin}")
        if self.detect_max_side < 64:
            raise ValueError(f"detect_max_side must be >= 64, got {self.detect_max_side}")
        if self.fast_side and self.fast_side < 48:
            raise ValueError(f"fast_side must be 0 (off) or >= 48, got {self.fast_side}")
        if self.min_face < 0:
            raise ValueError(f"min_face must be >= 0, got {self.min_face}")
        if not isinstance(self.detector_options, dict):
            raise ValueError("detector_options must be a dict")
        # checked against the detector's own parameters now, before any work; the library's
        # spellings (OpenCV's minNeighbors) are stored under the detector's names
        object.__setattr__(self, "detector_options", check_detector_options(self.detector, self.detector_options))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PrepareConfig":
        """Build from :meth:`to_dict` output; unknown keys are an error (a typo is not ignored)."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PrepareConfig key(s) {unknown}; valid: {sorted(known)}")
        if "detector_options" in d:
            d["detector_options"] = dict(d["detector_options"] or {})
        return cls(**d)

    def digest(self) -> str:
        """Hash of everything that changes the crops (the cache key's config half)."""
        text = json.dumps({"v": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __hash__(self) -> int:  # dict field: hash the JSON form
        return hash(self.digest())


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def as_config(config: PrepareConfig | dict | None) -> PrepareConfig:
    if config is None:
        return PrepareConfig()
    if isinstance(config, PrepareConfig):
        return config
    return PrepareConfig.from_dict(config)


# --------------------------------------------------------------------------- one photo

@dataclass
class PreparedFace:
    """An aligned face: the detection (coordinates in the ORIGINAL photo) and its crop."""

    face: Face
    crop: np.ndarray


class FacePipeline:
    """Detect, align, crop: one photo -> list of :class:`PreparedFace`.

    Every stage (training on raw photos, evaluate, predict, serve, people) goes through
    this class with the config stored in the bundle, so all see identical crops.
    """

    def __init__(self, config: PrepareConfig | dict | None = None) -> None:
        self.config = as_config(config)
        self.detector = cached_detector(self.config.detector, self.config.detector_options)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces, largest first, in original-photo coordinates.

        The detector sees the photo downscaled to ``detect_max_side``; boxes and landmarks
        are scaled back so the crop is cut from the full-resolution photo.
        """
        c = self.config
        sides = [c.detect_max_side]
        if c.multi_face in ONE_FACE_POLICIES and 0 < c.fast_side < min(max(rgb.shape[:2]), c.detect_max_side):
            sides.insert(0, c.fast_side)
        for side in sides:
            faces, seen = self._detect_at(rgb, side)
            if faces:
                break
        return [self.refine(rgb, f, f.width * seen / max(rgb.shape[:2])) for f in faces]

    def _detect_at(self, rgb: np.ndarray, max_side: int, to_original: float = 1.0) -> tuple[list[Face], int]:
        """Faces (in ``rgb`` coordinates) and the longest side of the image the detector saw.
        ``to_original``: original-photo pixels per pixel of ``rgb`` (a JPEG decoded at a
        reduced scale), so that ``min_face`` is judged in the original's pixels."""
        small, factor = _downscale(rgb, max_side)
        faces = [f.scaled(factor) if factor != 1.0 else f for f in self.detector.detect(small)]
        faces = [f for f in faces if f.width * to_original >= self.config.min_face]
        return sorted(faces, key=lambda f: f.area, reverse=True), max(small.shape[:2])

    def _refine_scale(self, face: Face, seen_width: float) -> float:
        """Pixels per pixel of ``face``'s image that :meth:`refine` works at (0: no refinement)."""
        t = self.config.refine_below
        return REFINE_FACE * t / max(face.width, 1.0) if t and seen_width < t else 0.0

    def refine(self, rgb: np.ndarray, face: Face, seen_width: float) -> Face:
        """Landmarks re-detected on a face-centred window when the detector saw the face
        narrower than ``refine_below`` px (whole-pixel landmarks are coarse there)."""
        from facelab.align import warp_crop

        scale = self._refine_scale(face, seen_width)
        if not scale:
            return face
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        side = REFINE_WINDOW * max(face.width, face.height)
        k = min(1.0, scale)  # the face becomes ~REFINE_FACE * refine_below px wide
        out = max(32, int(round(side * k)))
        m = np.array([[k, 0.0, out / 2 - k * cx], [0.0, k, out / 2 - k * cy]])
        found = self.detector.detect(warp_crop(rgb, m, out))
        if not found:
            return face
        best = min(found, key=lambda f: np.hypot((f.box[0] + f.box[2]) / 2 - out / 2, (f.box[1] + f.box[3]) / 2 - out / 2))
        if np.hypot((best.box[0] + best.box[2]) / 2 - out / 2, (best.box[1] + best.box[3]) / 2 - out / 2) > out / 4:
            return face
        return Face(face.box, (best.landmarks - m[:, 2]) / k, face.score)

    def crop(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The aligned, optionally light-balanced and background-suppressed crop of ``face``."""
        from facelab.align import align_face, balance_light, suppress_background, template_points

        c = self.config
        crop, _ = align_face(rgb, face.landmarks, c.size, c.template, c.margin)
        if c.light == "clahe":
            crop = balance_light(crop)
        if c.background != "keep":
            crop = suppress_background(crop, template_points(c.template, c.size, c.margin), c.background)
        return crop

    def select(self, faces: list[Face], width: int, height: int) -> list[Face]:
        """Apply the multi-face policy to ``faces`` (largest first) of a ``width`` x
        ``height`` photo."""
        if len(faces) > 1 and self.config.multi_face == "skip":
            return []
        if self.config.multi_face == "largest":
            return faces[:1]
        if self.config.multi_face == "main":
            return [main_face(faces, width, height)] if faces else []
        return faces

    def process(self, rgb: np.ndarray) -> list[PreparedFace]:
        """Detect, apply the multi-face policy, align and crop. Empty list = no usable face."""
        rgb = _as_rgb(rgb)
        chosen = self.select(self.detect(rgb), rgb.shape[1], rgb.shape[0])
        return [PreparedFace(f, self.crop(rgb, f)) for f in chosen]

    def process_image(self, image: np.ndarray | str | Path) -> list[PreparedFace]:
        """:meth:`process` for an RGB array, :meth:`process_file` for a file: a photo on
        disk goes the way training prepares it, so it gets the crop training got."""
        if isinstance(image, (str, Path)):
            return self.process_file(image)[1]
        return self.process(np.asarray(image))

    def process_file(self, source: str | Path | bytes, name: str = "<image>", formats: tuple[str, ...] | None = None,
                     max_pixels: int | None = None) -> tuple[list[Face], list[PreparedFace]]:
        """:meth:`process` for an encoded photo (a path or its bytes), faster on big JPEGs.

        A JPEG is decoded only as large as needed: at a reduced DCT scale for detection,
        then for the crop at the smallest scale that still has at least the crop's
        resolution (the full original when needed). Returns (all faces found, prepared faces).
        Raises :class:`~facelab.images.ImageError` for unreadable input. ``formats`` and
        ``max_pixels`` are passed to :func:`~facelab.images.decode_image` (an upload's
        allow-list and pixel limit).
        """
        import functools

        from facelab.images import MAX_PIXELS, decode_image

        decode = functools.partial(decode_image, formats=formats, max_pixels=max_pixels or MAX_PIXELS)

        if not isinstance(source, bytes):
            name, source = str(source), _read_bytes(Path(source))
        c = self.config
        fast = c.multi_face in ONE_FACE_POLICIES and c.fast_side > 0
        rgb, full = decode(source, name, min_side=c.fast_side if fast else c.detect_max_side,
                                 return_full_size=True)
        faces, seen = self._detect_at(rgb, c.fast_side, max(full) / max(rgb.shape[:2])) if fast else ([], 0)
        if not faces:
            if max(rgb.shape[:2]) < min(max(full), c.detect_max_side):
                rgb = decode(source, name, min_side=c.detect_max_side)
            faces, seen = self._detect_at(rgb, c.detect_max_side, max(full) / max(rgb.shape[:2]))
        seen_scale = seen / max(full)  # detector pixels per pixel of the original
        to_full = max(full) / max(rgb.shape[:2])
        faces = [f.scaled(to_full) if to_full != 1.0 else f for f in faces]
        chosen = self.select(faces, *full)
        if chosen and to_full > 1.0:
            need = max(max(_crop_scale(f, c), self._refine_scale(f, f.width * seen_scale)) for f in chosen) * max(full)
            if need > max(rgb.shape[:2]):
                rgb = decode(source, name, min_side=int(np.ceil(need)))
            to_full = max(full) / max(rgb.shape[:2])
        prepared = []
        for f in chosen:  # f in original coordinates; g in those of the decoded rgb
            g = f.scaled(1.0 / to_full) if to_full != 1.0 else f
            g = self.refine(rgb, g, f.width * seen_scale)
            prepared.append(PreparedFace(g.scaled(to_full) if to_full != 1.0 else g, self.crop(rgb, g)))
        return faces, prepared


def main_face(faces: Sequence[Face], width: int, height: int) -> Face:
    """The photographed person among several faces: the highest ``width / widest width -
    distance of the box centre from the photo centre`` (as fractions of the photo's width
    and height). A bystander must be clearly larger to win over a centred face, and a
    much smaller face near the centre does not win over the subject."""
    widest = max(f.width for f in faces)

    def score(f: Face) -> float:
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        return f.width / widest - float(np.hypot(cx / width - 0.5, cy / height - 0.5))

    return max(faces, key=score)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(path, os_reason(exc)) from None


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        return np.stack([img] * 3, axis=-1)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {img.shape}")
    return img


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``rgb`` shrunk so its longest side is <= max_side, and the factor back to the original."""
    import cv2

    h, w = rgb.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return rgb, 1.0
    s = max_side / longest
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return small, longest / max_side


# --------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """``$FACELAB_CACHE`` or ``~/.cache/facelab``."""
    return Path(os.environ.get("FACELAB_CACHE") or Path.home() / ".cache" / "facelab").expanduser()


@dataclass
class FileResult:
    """What happened to one source photo."""

    path: str
    status: str
    reason: str = ""
    n_faces: int = 0
    crops: list[str] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)
    sha256: str = ""
    cached: bool = False


class CropCache:
    """Content-addressed crops: ``root/crops/<config digest>/<sha[:2]>/<sha>_<i>.<format>``,
    and each photo's result as one line ``<sha>\t<json>`` in ``records/*.jsonl`` beside them.

    Every worker appends to its own records file. A small file per record cost as much as
    the crop itself (creating a file took ~1 ms of kernel time on the 2-core VMs we measure
    on, a third of a photo's whole budget); an appended line costs microseconds. A line is
    written after its crops are in place, so a record never names a missing crop, and a
    line cut short by a kill (no newline) is ignored: the photo is simply redone.
    """

    def __init__(self, root: Path | str | None, config: PrepareConfig) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.dir = self.root / "crops" / config.digest()
        self.config = config
        self._index: dict[str, tuple[Path, int, int]] | None = None
        self._log: Any = None  # this worker's records file, opened on the first store

    def _base(self, sha: str) -> Path:
        return self.dir / sha[:2] / sha

    def _read_index(self) -> dict[str, tuple[Path, int, int]]:
        """sha -> (records file, start, end) of its JSON, from every complete line."""
        index: dict[str, tuple[Path, int, int]] = {}
        for f in sorted((self.dir / "records").glob("*.jsonl")):
            try:
                data = f.read_bytes()
            except OSError:
                continue
            pos = 0
            while (end := data.find(b"\n", pos)) != -1:
                if data[pos + 64:pos + 65] == b"\t":
                    index[data[pos:pos + 64].decode("ascii", "replace")] = (f, pos + 65, end)
                pos = end + 1
        return index

    def load(self, sha: str) -> FileResult | None:
        if self._index is None:
            self._index = self._read_index()
        entry = self._index.get(sha)
        if entry is None:
            return None
        f, start, end = entry
        try:
            with open(f, "rb") as fh:
                fh.seek(start)
                result = FileResult(**json.loads(fh.read(end - start)))
        except (OSError, ValueError, TypeError):
            return None
        if not all(Path(p).is_file() for p in result.crops):
            return None
        result.cached = True
        return result

    def store(self, result: FileResult, crops: list[np.ndarray]) -> FileResult:
        from facelab.images import write_image

        base = self._base(result.sha256)
        result.crops = [str(write_image(base.with_name(f"{base.name}_{i}.{self.config.format}"), c))
                        for i, c in enumerate(crops)]
        if self._log is None:
            with disk_full_as_error(self.dir / "records"):
                (self.dir / "records").mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._log = open(self.dir / "records" / name, "ab", buffering=0)  # noqa: SIM115 - lives with the worker
        line = f"{result.sha256}\t{json.dumps(asdict(result), separators=(',', ':'))}\n".encode()
        with disk_full_as_error(self._log.name):
            self._log.write(line)  # one unbuffered append per record: complete once written
        return result


# --------------------------------------------------------------------------- worker

class WorkerError(RuntimeError):
    """A photo failed for a reason that is not bad input (a bug, a broken install): the
    whole run stops with the photo and the reason."""


class _Worker:
    """Pipeline + cache for one thread or process; turns a path into a :class:`FileResult`."""

    def __init__(self, config: PrepareConfig, cache_root: str) -> None:
        self.pipeline = FacePipeline(config)
        self.cache = CropCache(cache_root, config)

    def __call__(self, path: str, out_name: str | None = None) -> FileResult:
        """One photo through the cache or the pipeline; never raises for bad input (it becomes
        the result's status): anything else is a :class:`WorkerError` naming the photo."""
        try:
            return self._run(path, out_name)
        except (DiskFullError, WorkerError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a broken install: stop, name the photo
            log.debug("%s: prepare failed", path, exc_info=True)
            raise WorkerError(f"{path}: prepare failed ({type(exc).__name__}: {exc})") from exc

    def _run(self, path: str, out_name: str | None) -> FileResult:
        """With ``out_name`` the first crop is also placed there (here, in the worker, so that
        writing the output runs in parallel too; further faces are named by the main thread,
        which knows every output name)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return FileResult(path, "unreadable", os_reason(exc))
        sha = hashlib.sha256(data).hexdigest()
        result = self.cache.load(sha)
        if result is not None:
            result.path = path
        else:
            result, crops = _run_pipeline(self.pipeline, path, data, sha)
            try:
                result = self.cache.store(result, crops)
            except DiskFullError:
                raise
            except OSError as exc:  # a read-only cache must not stop the run
                log.warning("%s: could not write to the cache %s (%s)", path, self.cache.dir, exc)
        if out_name is not None and result.crops:
            try:
                place_crop(result.crops[0], Path(out_name))
            except OSError as exc:  # the main thread retries and reports it (see _write_outputs)
                log.debug("%s: could not place %s (%s)", result.path, out_name, exc)
        return result


def place_crop(crop: str | Path, target: Path) -> None:
    """Hard-link (or copy) a cached crop to its output name; an output that is already there
    with the same size is kept (a re-run into the same folder writes nothing)."""
    if not (target.is_file() and target.stat().st_size == Path(crop).stat().st_size):
        link_or_copy(crop, target)


def _run_pipeline(pipeline: FacePipeline, path: str, data: bytes, sha: str) -> tuple[FileResult, list[np.ndarray]]:
    """One photo's bytes -> its result row and crops (bad input becomes a row, not an error)."""
    try:
        faces, prepared = pipeline.process_file(data, path)
    except ImageError as exc:
        return FileResult(path, "unreadable", exc.reason, sha256=sha), []
    result = FileResult(path, "kept", n_faces=len(faces), sha256=sha, faces=[p.face.to_dict() for p in prepared])
    if not faces:
        result.status, result.reason = "no_face", "no face found"
    elif not prepared:
        result.status, result.reason = "several_faces", f"{len(faces)} faces (multi_face=skip)"
    elif len(faces) > 1:
        kept = "all" if len(prepared) > 1 else {"main": "the main face"}.get(pipeline.config.multi_face, "the largest")
        result.reason = f"{len(faces)} faces, kept {kept}"
    return result, [p.crop for p in prepared]


def _crop_scale(face: Face, config: PrepareConfig) -> float:
    """Crop pixels per original pixel for ``face`` (the similarity transform's scale)."""
    from facelab.align import similarity_transform, template_points

    m = similarity_transform(face.landmarks, template_points(config.template, config.size, config.margin))
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


_PROCESS_WORKER: list[_Worker] = []


_PROCESS_SETUP_ERROR: list[str] = []


def _init_process(config_dict: dict, cache_root: str) -> None:
    """Worker-process set-up: one thread per process (the processes are the parallelism).

    OMP_NUM_THREADS must be set before yuface's OpenMP runtime loads, or two workers each
    spinning two OpenMP threads on two cores run ten times slower. A set-up failure is kept
    and raised with the first photo (an initializer that raises only kills the process).
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
        _PROCESS_WORKER[:] = [_Worker(PrepareConfig.from_dict(config_dict), cache_root)]
    except Exception as exc:  # noqa: BLE001 - reported with the first photo
        _PROCESS_SETUP_ERROR[:] = [f"{type(exc).__name__}: {exc}"]


def _process_chunk(items: list[tuple[str, str | None]]) -> list[FileResult]:
    if not _PROCESS_WORKER:
        raise WorkerError(f"{items[0][0]}: the prepare worker could not start "
                          f"({_PROCESS_SETUP_ERROR[0] if _PROCESS_SETUP_ERROR else 'unknown error'})")
    return [_PROCESS_WORKER[0](*item) for item in items]


def run_files(paths: Sequence[Path | str], config: PrepareConfig, cache_dir: Path | str | None = None,
              workers: int = 2, progress: bool = True, desc: str = "prepare",
              processes: bool | None = None, out_names: Sequence[str] | None = None) -> list[FileResult]:
    """Run the pipeline over ``paths`` (cached, parallel, with progress), in order.
    ``out_names[i]``: where photo i's first crop goes, None = only cached.

    Workers are processes (``forkserver``) or threads; ``processes=None`` picks processes
    from :data:`PROCESSES_FROM` photos on. Detectors hold the GIL while they run (yuface,
    mtcnn's Python), so only processes run two detections at once; threads start at once and
    share the model, which wins on small jobs.
    """
    from facelab._progress import progress as progress_bar

    cache_root = str(CropCache(cache_dir, config).root)
    names = list(out_names) if out_names is not None else [None] * len(paths)
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(names)} output names")
    todo = [(str(p), s) for p, s in zip(paths, names)]
    if processes is None:
        processes = len(todo) >= PROCESSES_FROM
    if processes and not is_builtin_detector(config.detector):
        log.info("detector %r is registered by this program, not by facelab: preparing in threads "
                 "(worker processes would not know it)", config.detector)
        processes = False
    # Build the detector here first: a bad option value (or a missing model) stops the run
    # with one message before any worker starts, and OpenCV is fully imported before threads.
    cached_detector(config.detector, config.detector_options)
    bar = progress_bar(len(todo), desc, enabled=progress)
    results: list[FileResult] = []
    try:
        for r in _map(todo, config, cache_root, workers, processes):
            results.append(r)
            bar.update()
    finally:
        bar.close()
    return results


def _map(todo: list[tuple[str, str | None]], config: PrepareConfig, cache_root: str, workers: int,
         processes: bool):  # noqa: ANN202
    """Results for ``todo`` (path, output stem) in order, from threads, processes or this thread."""
    if workers <= 1 or len(todo) < 2:
        worker = _Worker(config, cache_root)
        yield from (worker(*item) for item in todo)
    elif processes:
        yield from _map_processes(todo, config, cache_root, workers)
    else:
        yield from _map_threads(todo, config, cache_root, workers)


def _map_threads(todo: list[tuple[str, str | None]], config: PrepareConfig, cache_root: str,
                 workers: int):  # noqa: ANN202
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def work(item: tuple[str, str | None]) -> FileResult:
        if not hasattr(local, "worker"):  # detectors are not all thread-safe: one per thread
            local.worker = _Worker(config, cache_root)
        return local.worker(*item)

    pending: deque = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="facelab-prepare")
    try:
        for item in todo:  # bounded look-ahead keeps memory flat on 200k-photo sources
            pending.append(pool.submit(work, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a failure stops the run at once: queued photos are dropped, not worked on
        pool.shutdown(wait=True, cancel_futures=True)


def _map_processes(todo: list[tuple[str, str | None]], config: PrepareConfig, cache_root: str,
                   workers: int):  # noqa: ANN202
    """Chunks of ``todo`` in worker processes. A worker that dies (killed, out of memory)
    breaks the pool and stops the run with the photos it held; it is never replaced in a
    loop, and a failure inside a worker comes back as :class:`WorkerError`."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    size = max(1, min(16, len(todo) // (workers * 8)))
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    pool = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_process,
                               initargs=(config.to_dict(), cache_root))
    processes = pool._processes  # noqa: SLF001 - see _stop_broken
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append((pool.submit(_process_chunk, chunk), chunk))
            if len(pending) >= 4 * workers:
                yield from pending[0][0].result()
                pending.popleft()
        while pending:
            yield from pending[0][0].result()
            pending.popleft()
    except BrokenProcessPool:
        _stop_broken(pool, processes)
        photo = pending[0][1][0][0] if pending else "prepare"  # the oldest unfinished chunk
        raise WorkerError(f"{photo}: a prepare worker process died while working on this photo or one of the "
                          f"{size - 1} after it (killed, or out of memory?); run again (finished photos come "
                          "from the cache), or with --threads to stay in one process") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_broken(pool: Any, processes: dict | None) -> None:
    """Kill what is left of a broken pool. The executor terminates its workers, but one that
    this thread was starting at that moment is missed and then waited for forever
    (Python 3.11: a worker killed early in the run hung prepare)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for p in list((processes or {}).values()):
        if p.is_alive():
            p.kill()


def _mp_context():  # noqa: ANN202 - multiprocessing context
    """``forkserver`` where available: workers fork from a clean single-threaded server, so a
    parent that already ran OpenCV, OpenMP or torch threads cannot deadlock them (plain
    ``fork`` does), and they start much faster than ``spawn``.

    The workers never import the caller's ``__main__``: multiprocessing would re-run a user's
    script in every worker, and a script that calls ``facelab.prepare`` at top level (no
    ``if __name__ == "__main__":`` guard) would then start workers from its workers, which die
    and are replaced forever. They need nothing from it (they run facelab code on paths)."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["facelab.prepare"])
    else:
        ctx = mp.get_context("spawn")
    return _WithoutMain(ctx)


class _WithoutMain:
    """A multiprocessing context whose processes start without the parent's ``__main__``."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self.Process = _PROCESS_WITHOUT_MAIN[ctx.get_start_method()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _process_without_main(base: type) -> type:
    """``base`` (a multiprocessing Process class) started under :func:`_main_module_hidden`;
    a module-level class, so that the process object pickles."""

    def _Popen(process_obj: Any) -> Any:  # noqa: N802 - multiprocessing's name
        with _main_module_hidden():
            return base._Popen(process_obj)

    name = f"_{base.__name__}WithoutMain"
    cls = type(name, (base,), {"_Popen": staticmethod(_Popen), "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


def _processes_without_main() -> dict[str, type]:
    from multiprocessing import context

    bases = {"forkserver": getattr(context, "ForkServerProcess", None), "spawn": context.SpawnProcess}
    return {method: _process_without_main(base) for method, base in bases.items() if base is not None}


_PROCESS_WITHOUT_MAIN = _processes_without_main()
_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a worker process is being started, ``sys.modules["__main__"]`` is a blank module:
    multiprocessing then sends the child no main module to import (it reads the path or the
    module name of ``__main__`` at that moment)."""
    import types

    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


# --------------------------------------------------------------------------- table -> cached crops

def prepare_table(table: SampleTable, config: PrepareConfig | dict | None = None,
                  cache_dir: Path | str | None = None, workers: int = 2, progress: bool = True) -> SampleTable:
    """The same table with each path replaced by its cached aligned crop.

    Rows without a usable face are dropped and logged. A table read from a folder written
    by ``facelab prepare`` (``table.prepared`` set) is returned unchanged.
    """
    if table.prepared is not None:
        log.info("%s is already prepared (facelab_prepared.json); using its crops as they are", table.root)
        return table
    config = as_config(config)
    try:
        results = run_files(table.paths, config, cache_dir, workers, progress)
    except DiskFullError as exc:
        raise _disk_full_advice(exc, None, CropCache(cache_dir, config).root) from None
    keep = [i for i, r in enumerate(results) if r.crops]
    dropped = [r for r in results if not r.crops]
    _log_rejects(dropped)
    if dropped:
        counts = Counter(r.status for r in dropped)
        log.warning("prepare_table: dropped %d of %d photos without a usable face (%s)", len(dropped),
                    len(results), ", ".join(f"{k}: {v}" for k, v in counts.items()))
    out = table.subset(keep)
    out.sources = [Path(table.source_of(i)) for i in keep]
    out.paths = [Path(results[i].crops[0]) for i in keep]
    out.prepared = {"config": config.to_dict(), "source": str(table.root), "cache": True}
    return out


# --------------------------------------------------------------------------- whole source -> folder

@dataclass
class PrepareReport:
    """The outcome of :func:`prepare`."""

    out: Path
    counts: dict[str, int]
    results: list[FileResult]
    csv_path: Path
    grid_path: Path | None
    html_path: Path | None
    seconds: float
    table: SampleTable | None = None

    @property
    def images_per_second(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        c = self.counts
        return (f"{len(self.results)} photos in {self.seconds:.1f}s: kept {c.get('kept', 0)}, "
                f"no face {c.get('no_face', 0)}, several faces {c.get('several_faces', 0)} skipped / "
                f"{c.get('kept_from_several', 0)} kept, "
                f"unreadable {c.get('unreadable', 0)} (from cache: {c.get('cached', 0)})")


def prepare(src: str | Path, out: str | Path, config: PrepareConfig | dict | None = None,
            workers: int = 2, cache_dir: str | Path | None = None, progress: bool = True,
            report_html: bool = True, grid_size: int = 24, processes: bool | None = None) -> PrepareReport:
    """Detect, align and crop every photo of ``src`` into ``out``, keeping layout and labels.

    ``src`` is anything :func:`facelab.data.load_source` reads. The output is loadable the
    same way (a CelebA source stays CelebA with its txt files, a folder tree stays a folder
    tree, a CSV gets a new ``labels.csv``), plus ``facelab_prepared.json`` and a report in
    ``out/.facelab_report/`` (CSV with a reason per file, a grid of originals next to crops,
    and an HTML page).
    """
    config = as_config(config)
    out = Path(out).expanduser().resolve()
    table = load_source(src)
    if out == table.root or (table.root.is_dir() and out.is_relative_to(table.root) and table.source != "csv"):
        raise ValueError(f"{out}: the output folder must not be inside the source {table.root}")
    _warn_if_reconfigured(out, config)
    cached_detector(config.detector, config.detector_options)  # a bad option value stops before any output
    cache_root = CropCache(cache_dir, config).root
    try:
        mark_incomplete(out, "facelab prepare")
        report = _prepare_into(table, out, config, workers, cache_dir, progress, report_html, grid_size, processes)
    except DiskFullError as exc:
        raise _disk_full_advice(exc, out, cache_root) from None
    clear_incomplete(out)
    log.info("prepare %s -> %s: %s", table.root, out, report.summary())
    return report


@dataclass
class ShardReport:
    """What one ``prepare --shard K/N`` process did: its slice, now in the crop cache."""

    shard: int
    shards: int
    photos: int
    counts: dict[str, int]
    seconds: float
    cache: Path

    def summary(self) -> str:
        done = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return (f"shard {self.shard}/{self.shards}: {self.photos} photo(s) in {self.seconds:.1f} s ({done}); "
                f"crops in {self.cache}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N, or a ValueError that shows the form."""
    k, sep, n = text.partition("/")
    try:
        shard, shards = int(k), int(n)
    except ValueError:
        shard = shards = -1
    if not sep or shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/2 and 1/2")
    return shard, shards


def prepare_shard(src: str | Path, shard: int, shards: int, config: PrepareConfig | dict | None = None,
                  workers: int = 1, cache_dir: str | Path | None = None, progress: bool = True,
                  processes: bool | None = None) -> ShardReport:
    """Prepare slice ``shard`` of ``shards`` of ``src`` into the crop cache only.

    Photo i (in :func:`~facelab.data.load_source` order) belongs to slice ``i % shards``, so
    N processes (or machines sharing ``cache_dir``, or whose cache folders are copied
    together afterwards: every worker writes its own records file) split the work without
    talking to each other. The merge is a plain :func:`prepare` into the output folder:
    every photo then comes from the cache, and the output is the one a single process
    writes (the crops are content-addressed and deterministic).
    """
    config = as_config(config)
    table = load_source(src)
    t0 = time.perf_counter()
    mine = table.paths[shard::shards]
    cache_root = CropCache(cache_dir, config).root
    try:
        results = run_files(mine, config, cache_dir, workers, progress, desc=f"prepare {shard}/{shards}",
                            processes=processes)
    except DiskFullError as exc:
        raise _disk_full_advice(exc, None, cache_root) from None
    return ShardReport(shard, shards, len(mine), _counts(results), time.perf_counter() - t0, cache_root)


def _counts(results: list[FileResult]) -> dict[str, int]:
    """Photos per outcome, and how many came from the cache."""
    counts = dict(Counter(r.status for r in results))
    counts["cached"] = sum(r.cached for r in results)
    return counts


def _prepare_into(table: SampleTable, out: Path, config: PrepareConfig, workers: int, cache_dir: str | Path | None,
                  progress: bool, report_html: bool, grid_size: int, processes: bool | None) -> PrepareReport:
    t0 = time.perf_counter()
    names = _primary_names(table, config.format)
    results = run_files(table.paths, config, cache_dir, workers, progress, processes=processes,
                        out_names=[str(out / n) for n in names])
    outputs = _write_outputs(table, results, out, names)
    seconds = time.perf_counter() - t0
    counts = _counts(results)
    counts["kept_from_several"] = sum(r.status == "kept" and r.n_faces > 1 for r in results)
    _log_rejects(results)
    csv_path = _write_csv(out / REPORT_DIR / "report.csv", results, outputs)
    grid_path = _write_grid(out / REPORT_DIR / "grid.png", results, grid_size)
    report = PrepareReport(out, counts, results, csv_path, grid_path, None, seconds)
    if report_html:
        report.html_path = _write_html(out / REPORT_DIR / "report.html", report, config, table)
    write_json(out / PREPARED_MANIFEST, {
        "format": 1, "config": config.to_dict(), "source": str(table.root), "source_kind": table.source,
        "counts": counts, "photos": len(results), "rows": sum(len(o) for o in outputs),
        "report": {"csv": str(csv_path.relative_to(out)), "grid": str(grid_path.relative_to(out)) if grid_path else None,
                   "html": str(report.html_path.relative_to(out)) if report.html_path else None},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return report


def _disk_full_advice(exc: DiskFullError, out: Path | None, cache_root: Path) -> DiskFullError:
    """The disk-full error told about the folder the user chose (the output or the cache)."""
    again = "then run the same command again: photos already done come from the cache"
    if exc.path.is_relative_to(cache_root):
        return exc.within(cache_root, f"the crop cache is there; free some space or set --cache-dir "
                                      f"(or FACELAB_CACHE) to a disk with room, {again}")
    if out is None:
        return exc
    return exc.within(out, f"{out} is marked incomplete ({INCOMPLETE_MARKER}); free some space or "
                           f"choose an output folder on another disk, {again.replace('command', 'prepare')}")


def _warn_if_reconfigured(out: Path, config: PrepareConfig) -> None:
    """Re-using an output folder with another config leaves crops the new run does not write."""
    try:
        previous = json.loads((out / PREPARED_MANIFEST).read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError):
        return
    if previous is not None and previous != config.to_dict():
        log.warning("%s was prepared with a different config; crops the new run does not "
                    "rewrite (other policies, rejected photos) stay there. Use a new folder for a "
                    "clean result.", out)


def _log_rejects(results: list[FileResult], limit: int = 20) -> None:
    rejects = [r for r in results if r.status != "kept"]
    for r in rejects[:limit]:
        log.warning("%s: skipped (%s: %s)", r.path, r.status, r.reason)
    if len(rejects) > limit:
        log.warning("... and %d more skipped photos; every reason is in the report CSV", len(rejects) - limit)


def _output_stems(table: SampleTable) -> list[Path]:
    """Each row's natural output name without extension, relative to the output folder."""
    stems: list[Path] = []
    for src in table.paths:
        if table.source == "celeba":
            rel = Path(src.parent.name if src.parent.name != "img_celeba" else "img_align_celeba") / src.name
        elif table.source == "csv":
            rel = Path("images") / _relative(src, table.root.parent)
        else:
            rel = _relative(src, table.root)
        stems.append(rel.with_suffix(""))
    return stems


def _primary_names(table: SampleTable, fmt: str) -> list[str]:
    """Each photo's output name for its first crop, relative to the output folder, no two
    alike (case-insensitively, for macOS and Windows disks): ``x.jpg`` and ``x.png`` in one
    folder become ``x.jpg`` and ``x.png.jpg``. A photo keeps its natural name (the source's
    stem) when it is the first to claim it; names too long for the file system are cut
    and given a short hash (:func:`facelab._io.fit_name`)."""
    suffix = f".{fmt}"
    stems = _output_stems(table)
    natural = [str(st.parent / fit_name(st.name, suffix)) for st in stems]
    names: list[str | None] = [None] * len(stems)
    taken: set[str] = set()
    for i, name in enumerate(natural):
        if name.casefold() not in taken:
            names[i] = name
            taken.add(name.casefold())
    for i, st in enumerate(stems):
        if names[i] is None:
            candidates = (st.name + table.paths[i].suffix, *(f"{st.name}~{j}" for j in range(2, 10 ** 6)))
            names[i] = _first_free(st.parent, candidates, suffix, taken)
    return names  # type: ignore[return-value]


def _first_free(folder: Path, stems: Any, suffix: str, taken: set[str]) -> str:
    """The first ``folder/stem+suffix`` not in ``taken`` (which it joins)."""
    for stem in stems:
        name = str(folder / fit_name(stem, suffix))
        if name.casefold() not in taken:
            taken.add(name.casefold())
            return name
    raise RuntimeError(f"no free output name for {folder / stems}")  # pragma: no cover - 10^6 tries


def _extra_names(primary: str, n: int, taken: set[str]) -> list[str]:
    """Names of a photo's 2nd..nth crops (``multi_face="all"``): ``photo_1.jpg``, ... unless
    another photo or crop has that name (``photo_1.jpg`` beside a three-face ``photo.jpg``),
    then ``photo_1~2.jpg``."""
    p = Path(primary)
    return [_first_free(p.parent, (f"{p.stem}_{k}", *(f"{p.stem}_{k}~{j}" for j in range(2, 10 ** 6))),
                        p.suffix, taken) for k in range(1, n)]


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return Path("external") / hashlib.sha1(str(path.parent).encode()).hexdigest()[:8] / path.name


def _write_outputs(table: SampleTable, results: list[FileResult], out: Path, names: list[str]) -> list[list[str]]:
    """Place every crop under its output name and write the label files; returns each
    photo's output names. The workers placed first crops; one they could not is placed
    here, so that its error stops the run."""
    taken = {n.casefold() for n in names}
    outputs: list[list[str]] = []
    rows: list[tuple[int, str]] = []
    for i, r in enumerate(results):
        mine = [names[i], *_extra_names(names[i], len(r.crops), taken)] if r.crops else []
        for crop, name in zip(r.crops, mine):
            place_crop(crop, out / name)
            rows.append((i, name))
        outputs.append(mine)
    if table.source == "celeba":
        _write_celeba_labels(table, rows, out)
    elif table.source == "csv":
        _write_csv_labels(table, rows, out)
    return outputs


def _write_celeba_labels(table: SampleTable, rows: list[tuple[int, str]], out: Path) -> None:
    lines = [str(len(rows)), " ".join(table.label_names)]
    ids, parts = [], []
    split_code = {"train": "0", "valid": "1", "test": "2"}
    for i, name in rows:
        fname = Path(name).name
        lines.append(fname + " " + " ".join("1" if v else "-1" for v in table.labels[i]))
        if table.identities[i] is not None:
            ids.append(f"{fname} {table.identities[i]}")
        if table.splits[i] is not None:
            parts.append(f"{fname} {split_code[table.splits[i]]}")
    write_text(out / CELEBA_ATTR_FILE, "\n".join(lines) + "\n")
    if ids:
        write_text(out / CELEBA_IDENTITY_FILE, "\n".join(ids) + "\n")
    if parts:
        write_text(out / CELEBA_PARTITION_FILE, "\n".join(parts) + "\n")


def _write_csv_labels(table: SampleTable, rows: list[tuple[int, str]], out: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    label_cols = table.label_names if table.kind == "attributes" else ["label"]
    w.writerow(["path", *label_cols, "identity", "split"])
    for i, name in rows:
        labels = ([int(v) for v in table.labels[i]] if table.kind == "attributes"
                  else [table.label_names[int(table.labels[i])]])
        w.writerow([name, *labels, table.identities[i] or "", table.splits[i] or ""])
    write_text(out / "labels.csv", buf.getvalue())


# --------------------------------------------------------------------------- report

REPORT_COLUMNS = ("file", "status", "reason", "faces", "crops", "from_cache", "output", "box_width",
                  "box_height", "score")


def _write_csv(path: Path, results: list[FileResult], outputs: list[list[str]]) -> Path:
    """One row per crop (a rejected photo: one row without one), with the detection's box
    size in the original photo's pixels and the detector's score: sort by ``box_width`` to
    review the smallest detections first (where a shoulder or a poster passes for a face)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(REPORT_COLUMNS)
    for r, names in zip(results, outputs):
        head = [r.path, r.status, r.reason, r.n_faces, len(r.crops), int(r.cached)]
        if not names:
            w.writerow([*head, "", "", "", ""])
        for name, face in zip(names, r.faces or [None] * len(names)):
            box = face["box"] if face else None
            w.writerow([*head, name, round(box[2] - box[0], 1) if box else "", round(box[3] - box[1], 1) if box else "",
                        face.get("score", "") if face else ""])
    return write_text(path, buf.getvalue())


def _thumb(path: str, side: int) -> np.ndarray | None:
    """A small RGB thumbnail of an original photo, None when it cannot be read."""
    import cv2

    from facelab.images import decode_image

    try:
        rgb = decode_image(Path(path).read_bytes(), path, min_side=side)
    except (ImageError, OSError):
        return None
    s = side / max(rgb.shape[:2])
    return cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                      interpolation=cv2.INTER_AREA) if s < 1 else rgb


def _write_grid(path: Path, results: list[FileResult], per_status: int) -> Path | None:
    """Originals next to their crops: the rejects (up to ``per_status`` per kind) first,
    then a sample of kept photos."""
    from PIL import Image

    from facelab._html import image_grid

    picked: list[FileResult] = []
    for status in (*STATUSES[1:], STATUSES[0]):
        picked += [r for r in results if r.status == status][:per_status if status != "kept" else 16]
    if not picked:
        return None
    images, captions = [], []
    for r in picked:
        images.append(_thumb(r.path, 256))
        captions.append(f"{Path(r.path).name}: {r.status}")
        images.append(read_image(r.crops[0]) if r.crops else None)
        captions.append("crop" if r.crops else (r.reason or r.status))
    buf = io.BytesIO()  # fast PNG settings: the grid is a preview, not an archive
    Image.fromarray(image_grid(images, captions, cols=8, tile=112)).save(buf, format="PNG", compress_level=1)
    return write_bytes(path, buf.getvalue())


def _smallest_detections(results: list[FileResult], n: int = 12) -> list[tuple[str, float, float, float]]:
    """(photo, box width, box height, score) of the ``n`` narrowest kept faces."""
    rows = [(r.path, round(f["box"][2] - f["box"][0], 1), round(f["box"][3] - f["box"][1], 1), f.get("score", 0.0))
            for r in results if r.status == "kept" for f in r.faces]
    return sorted(rows, key=lambda row: row[1])[:n]


def _write_html(path: Path, report: PrepareReport, config: PrepareConfig, table: SampleTable) -> Path:
    from facelab._html import escape, img_tag, table as html_table, write_page

    counts = [(k, report.counts.get(k, 0)) for k in (*STATUSES, "kept_from_several", "cached")]
    rejects = [(r.path, r.status, r.reason) for r in report.results if r.status != "kept"]
    sections = [("Counts", html_table(counts, ["status", "photos"])),
                ("Config", html_table(sorted(config.to_dict().items()), ["option", "value"]))]
    if report.grid_path:
        sections.append(("Originals and crops (rejects first)", img_tag(report.grid_path.read_bytes(), "grid")))
    sections.append((f"Rejected photos ({len(rejects)})",
                     html_table(rejects, ["file", "status", "reason"]) if rejects else "<p class='ok'>none</p>"))
    smallest = _smallest_detections(report.results)
    if smallest:
        sections.append(("Smallest detections (check these first: a false face is usually small; "
                         "every box is in report.csv)", html_table(smallest, ["file", "box width", "box height",
                                                                              "score"])))
    intro = (f"<p>Source <code>{escape(table.root)}</code> ({table.source}), output "
             f"<code>{escape(report.out)}</code>. {escape(report.summary())}</p>")
    return write_page(path, "facelab prepare report", sections, intro)
