"""A crop's heat map carried back onto the ORIGINAL photo through the inverse of the
alignment transform (the similarity transform from the face's five landmarks onto the
bundle's crop template, exactly as ``facelab.align.align_face`` computes it)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from facelab.align import similarity_transform, template_points
from facelab.prepare import as_config

if TYPE_CHECKING:  # pragma: no cover
    from facelab.detect import Face


def crop_transform(face: "Face", prepare: dict | None) -> np.ndarray:
    """The 2x3 matrix that took the original photo to the aligned crop (as align_face does)."""
    c = as_config(prepare)
    return similarity_transform(face.landmarks, template_points(c.template, c.size, c.margin))


def to_original(cam: np.ndarray, face: "Face", prepare: dict | None, shape: tuple[int, ...]) -> np.ndarray:
    """The crop's heat map warped back onto the original photo of ``shape`` (0 outside the crop)."""
    import cv2

    size = as_config(prepare).size
    cam = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    inverse = cv2.invertAffineTransform(crop_transform(face, prepare))
    return cv2.warpAffine(cam, inverse, (shape[1], shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
