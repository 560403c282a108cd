"""What explain is asked to do (:class:`ExplainConfig`) and what it hands back
(:class:`Explanation` per face, :class:`ExplainResult` per call): plain data, no torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facelab.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from facelab.detect import Face

CAM_METHODS = ("gradcam", "hirescam", "gradcam++")
MIN_CAM_SIDE = 6
"""Default CAM layer: the last one whose map is at least this many cells across, so that the
face box of an aligned crop (about half the crop's side) holds several cells."""


@dataclass
class ExplainConfig:
    """How to explain."""

    method: str = "gradcam"
    """CAM variant: gradcam, hirescam or gradcam++."""
    target: str | None = None
    """Label (class or attribute) to explain; default: the predicted class, or for multilabel
    the attribute with the highest probability."""
    layer: str | None = None
    """Module name (as in ``model.named_modules()``) to explain at; default: the last one whose
    map is at least 6 cells across (``MIN_CAM_SIDE``, :func:`facelab.explain.find_cam_layer`)."""
    aligned: bool = False
    """The photos are already aligned crops: skip face detection."""
    feature_maps: bool = True
    """Also draw feature maps of the first blocks and the first layer's filters (first photo)."""
    blocks: int = 3
    """Convolution blocks shown in the feature-map picture."""
    channels: int = 12
    """Channels shown per feature map."""
    alpha: float = 0.5
    """Opacity of the heat map over the photo."""

    def __post_init__(self) -> None:
        if self.method not in CAM_METHODS:
            raise ConfigError(f"unknown CAM method {self.method!r}; valid: {', '.join(CAM_METHODS)}")
        if self.blocks < 1 or self.channels < 1 or not 0 < self.alpha <= 1:
            raise ConfigError("blocks >= 1, channels >= 1 and 0 < alpha <= 1 are required")


@dataclass
class Explanation:
    """One explained face."""

    path: str
    label: str
    prob: float
    crop: np.ndarray
    cam: np.ndarray
    """Heat map over the crop, float32 in [0, 1], same height/width as ``crop``."""
    face: "Face | None" = None
    original: np.ndarray | None = None
    cam_original: np.ndarray | None = None
    """Heat map over the original photo (0 outside the crop's footprint)."""
    predicted: bool = True
    """The model decides for ``label`` on this face (its threshold / arg-max)."""


@dataclass
class ExplainResult:
    out: Path
    items: list[Explanation]
    files: dict[str, Path] = field(default_factory=dict)
