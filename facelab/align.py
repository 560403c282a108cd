"""Face alignment: five landmarks -> similarity transform onto a template -> square crop.

Templates are five points in unit coordinates of the square output (0..1 across, 0..1
down), so one template serves every output size:

* ``celeba`` (default): the framing of the official CelebA aligned photos (178x218), placed
  in a 218x218 square (20 px of extra context left and right). The points are the MEAN
  yuface landmarks over the 900 official aligned photos of celeba-mini
  (``python bench/prepare.py --derive-template`` recomputes them). It keeps hair, hats,
  earrings and necklaces in view, which CelebA's 40 attributes are about.
* ``tight``: the common 112x112 face-recognition template (the ArcFace / InsightFace 5-point
  layout): eyebrows to chin, little else. Good for identity, poor for hair/hat attributes.

``margin`` adds context around either template: each side grows by ``margin`` times the
template's frame (0.1 = 10 % more on each side), and the face shrinks accordingly.
"""
from __future__ import annotations

import numpy as np

from facelab.errors import ConfigError

# Mean yuface landmarks on celeba-mini's official 178x218 aligned photos (900 of 900 found).
_CELEBA_178x218 = np.array([[68.57, 112.06], [107.83, 112.38], [87.55, 134.75],
                            [71.52, 151.44], [104.55, 152.05]], dtype=np.float64)
_ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

TEMPLATES: dict[str, np.ndarray] = {
    "celeba": (_CELEBA_178x218 + [20.0, 0.0]) / 218.0,
    "tight": _ARCFACE_112 / 112.0,
}


def list_templates() -> list[str]:
    return sorted(TEMPLATES)


def template_points(name: str, size: int, margin: float = 0.0) -> np.ndarray:
    """The template's five points in pixels of a ``size`` x ``size`` crop, float64 (5, 2)."""
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; valid: {', '.join(list_templates())}")
    unit = (TEMPLATES[name] + margin) / (1.0 + 2.0 * margin)
    return unit * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    Umeyama's closed form; returns the 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = (sig * np.diag(sign)).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def warp_crop(rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Apply the 2x3 transform ``m`` and cut a size x size crop.

    When the transform shrinks a lot (a big face in a big photo), the source is first
    area-downscaled so the warp does not alias.
    """
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        pre = min(1.0, 2.0 * scale)
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, round(w * pre)), max(1, round(h * pre))), interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] /= pre
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int, template: str = "celeba",
               margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Aligned size x size RGB crop of the face with ``landmarks``; also returns the 2x3 matrix."""
    m = similarity_transform(landmarks, template_points(template, size, margin))
    return warp_crop(rgb, m, size), m


def box_crop(rgb: np.ndarray, box: tuple[float, float, float, float], size: int,
             margin: float = 0.0) -> np.ndarray:
    """Square crop around a face box (no rotation), for faces without usable landmarks."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    k = size / max(side, 1.0)
    m = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]])
    return warp_crop(rgb, m, size)


def balance_light(rgb: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of Lab: evens out shadows without shifting colours."""
    import cv2

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    lab[..., 0] = clahe.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def face_mask(size: int, landmarks: np.ndarray, feather: float = 0.08) -> np.ndarray:
    """Soft elliptical mask (float32 0..1, size x size) covering the face and hair around
    the aligned ``landmarks`` (pixels in the crop)."""
    import cv2

    lm = np.asarray(landmarks, np.float64)
    eye_c = lm[:2].mean(0)
    mouth_c = lm[3:].mean(0)
    eye_dist = float(np.linalg.norm(lm[1] - lm[0]))
    em = float(np.linalg.norm(mouth_c - eye_c))
    centre = (eye_c + mouth_c) / 2 - [0.0, 0.35 * em]
    axes = (1.55 * eye_dist, 2.25 * em)
    angle = float(np.degrees(np.arctan2(lm[1, 1] - lm[0, 1], lm[1, 0] - lm[0, 0])))
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))),
                (int(round(axes[0])), int(round(axes[1]))), angle, 0, 360, 1.0, -1)
    k = max(3, int(feather * size) | 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def suppress_background(crop: np.ndarray, landmarks: np.ndarray, mode: str = "blur") -> np.ndarray:
    """Replace what lies outside :func:`face_mask` by a heavy blur (``blur``) or flat grey
    (``grey``), with a soft edge."""
    import cv2

    size = crop.shape[0]
    if mode == "blur":
        k = max(3, (size // 8) | 1)
        back = cv2.GaussianBlur(crop, (k, k), 0)
    elif mode == "grey":
        back = np.full_like(crop, 128)
    else:
        raise ConfigError(f"unknown background mode {mode!r}; valid: blur, grey")
    mask = face_mask(size, landmarks)[..., None]
    return (crop * mask + back * (1.0 - mask) + 0.5).astype(np.uint8)
