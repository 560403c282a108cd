"""How faces are found and cropped: :class:`PrepareConfig`, stored in ``facelab_prepared.json``
and in every run bundle, so that predict and serve crop new photos exactly like the training
photos were cropped."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

from facelab.align import list_templates
from facelab.detect import check_detector_options, list_detectors
from facelab.errors import ConfigError

#: Bump when the pipeline's output changes for the same config (invalidates caches).
PIPELINE_VERSION = 2  # 2: smaller refinement window, min_face in original pixels
MULTI_FACE_POLICIES = ("largest", "main", "all", "skip")
ONE_FACE_POLICIES = ("largest", "main")  # keep one face: the fast low-resolution first pass applies
LIGHT_MODES = ("none", "clahe")
BACKGROUND_MODES = ("keep", "blur", "grey")
CROP_FORMATS = ("jpg", "png")


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
        if self.detector not in list_detectors():
            raise ConfigError(f"unknown detector {self.detector!r}; valid: {', '.join(list_detectors())}")
        if self.template not in list_templates():
            raise ConfigError(f"unknown template {self.template!r}; valid: {', '.join(list_templates())}")
        _check_choice("multi_face", self.multi_face, MULTI_FACE_POLICIES)
        _check_choice("light", self.light, LIGHT_MODES)
        _check_choice("background", self.background, BACKGROUND_MODES)
        _check_choice("format", self.format, CROP_FORMATS)
        if not 16 <= self.size <= 2048:
            raise ConfigError(f"size must be between 16 and 2048 pixels, got {self.size}")
        if not 0.0 <= self.margin <= 1.0:
            raise ConfigError(f"margin must be between 0 and 1, got {self.margin}")
        if self.detect_max_side < 64:
            raise ConfigError(f"detect_max_side must be >= 64, got {self.detect_max_side}")
        if self.fast_side and self.fast_side < 48:
            raise ConfigError(f"fast_side must be 0 (off) or >= 48, got {self.fast_side}")
        if self.min_face < 0:
            raise ConfigError(f"min_face must be >= 0, got {self.min_face}")
        if not isinstance(self.detector_options, dict):
            raise ConfigError("detector_options must be a dict")
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
            raise ConfigError(f"unknown PrepareConfig key(s) {unknown}; valid: {sorted(known)}")
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
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def as_config(config: PrepareConfig | dict | None) -> PrepareConfig:
    if config is None:
        return PrepareConfig()
    if isinstance(config, PrepareConfig):
        return config
    return PrepareConfig.from_dict(config)

