"""What `facelab inspect` is asked to look at (:class:`InspectConfig`), what one photo looks
like (:class:`ImageStats`), and what it reports (:class:`Finding`, :class:`InspectReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab._phash import DIFF_THRESHOLD, NEAR_THRESHOLD, Fingerprint
from facelab.errors import ConfigError

SEVERITIES = ("error", "warning", "info")
#: Image properties compared between classes by the shortcut check.
PROPERTIES = ("brightness", "contrast", "saturation", "width", "height", "greyscale")


@dataclass
class InspectConfig:
    """What `facelab inspect` looks at, and how sensitive it is."""

    samples: int = 8
    """Sample photos shown per class."""
    duplicates: bool = True
    """Look for exact and near-identical pictures (and their leakage across splits)."""
    hash_threshold: int = NEAR_THRESHOLD
    """Near-identical: at most this many of 64 perceptual-hash bits differ..."""
    diff_threshold: float = DIFF_THRESHOLD
    """...and the 32x32 thumbnails differ by at most this much (facelab._phash)."""
    imbalance_ratio: float = 3.0
    """Warn when the largest class has this many times the photos of the smallest."""
    rare_rate: float = 0.05
    """Warn about attributes whose positive rate is below this (or above 1 - this)."""
    shortcut_auc: float = 0.9
    """Warn when one image property alone separates a class from the rest this well (ROC AUC)."""
    min_group: int = 8
    """Smallest class (or attribute side) the shortcut check judges."""
    faces: bool = False
    """Run face detection (facelab.prepare's pipeline and cache) and report outcomes per class."""
    detector: str | None = None
    """Detector for ``faces`` (default: facelab.prepare's default)."""
    embed: bool = False
    """Look for suspected label errors with face embeddings (useful when classes are people)."""
    run: str | None = None
    """A trained run (or bundle) whose predictions are compared with the labels."""
    disagree: float = 0.8
    """With ``run``: flag a photo when the model puts at least this probability elsewhere."""
    workers: int = 2
    """Threads reading images."""

    def __post_init__(self) -> None:
        if self.samples < 0 or self.workers < 1 or self.min_group < 2:
            raise ConfigError("samples must be >= 0, workers >= 1 and min_group >= 2")
        if not 0.5 < self.shortcut_auc <= 1.0:
            raise ConfigError(f"shortcut_auc must be in (0.5, 1], got {self.shortcut_auc}")
        if not 0.0 <= self.rare_rate < 0.5:
            raise ConfigError(f"rare_rate must be in [0, 0.5), got {self.rare_rate}")
        if not 0.5 <= self.disagree < 1.0:
            raise ConfigError(f"disagree must be in [0.5, 1), got {self.disagree}")
        if self.imbalance_ratio < 1.0:
            raise ConfigError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")


@dataclass
class Finding:
    """One problem (or note) the report raises."""

    check: str
    severity: str
    message: str
    fix: str = ""
    files: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Table rows of the photos concerned (thumbnails in the HTML report)."""


@dataclass
class ImageStats:
    """What one readable photo looks like."""

    width: int
    height: int
    format: str
    greyscale: bool
    brightness: float
    contrast: float
    saturation: float
    sha256: str
    fp: Fingerprint

    def value(self, prop: str) -> float:
        return float(getattr(self, prop))


@dataclass
class InspectReport:
    """Where the report went, and what it found."""

    out: Path
    html: Path
    json: Path
    findings: list[Finding]
    summary: dict[str, Any]

    def checks(self) -> set[str]:
        """Names of the checks that raised a warning or an error."""
        return {f.check for f in self.findings if f.severity != "info"}

    def find(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]
