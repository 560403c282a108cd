"""One photo -> aligned face crops: :class:`FacePipeline` (THE crop every stage uses)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab.align import align_face, balance_light, similarity_transform, suppress_background, template_points, warp_crop
from facelab.detect import Face, cached_detector
from facelab.errors import DataError
from facelab.images import MAX_PIXELS, decode_image, read_bytes
from facelab.prepare.config import ONE_FACE_POLICIES, PrepareConfig, as_config

REFINE_FACE = 1.6
"""Refinement re-detects a small face at about this many times ``refine_below`` px wide ..."""
REFINE_WINDOW = 1.6
"""... in a square window this many face sides across. Measured on the 40 uncropped
celeba-wild-mini photos (bench/prepare.py): 1.6 / 1.6 (a ~100 px window) is 1.5x faster
than 2.5 / 2.0 (~200 px; yuface's time grows with the pixels) and its crops are as close to
the official aligned ones (landmarks 3.6 vs 4.1 px mean, SSIM 0.50 vs 0.49)."""


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
        decode = functools.partial(decode_image, formats=formats, max_pixels=max_pixels or MAX_PIXELS)

        if not isinstance(source, bytes):
            name, source = str(source), read_bytes(source)
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


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        return np.stack([img] * 3, axis=-1)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"expected an RGB image of shape (H, W, 3), got {img.shape}")
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


def _crop_scale(face: Face, config: PrepareConfig) -> float:
    """Crop pixels per original pixel for ``face`` (the similarity transform's scale)."""
    m = similarity_transform(face.landmarks, template_points(config.template, config.size, config.margin))
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))

