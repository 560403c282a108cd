"""The sample table every loader returns: paths, labels and their meta data, one row per photo."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
LABEL_KINDS = ("classes", "attributes")
# Folder names accepted for each split (ImageNet/fastai style trees).
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test", "testing": "test"}


@dataclass
class SampleTable:
    """One row per photo, whatever layout it came from.

    Attributes:
        paths: absolute image paths, length N.
        labels: ``kind == "classes"``: int64 array of shape (N,), an index into
            ``label_names``. ``kind == "attributes"``: uint8 array of shape (N, L) with
            values in {0, 1} (CelebA's -1 is converted to 0 once, here).
        label_names: class names (sorted) or attribute names (file order), length L.
        kind: one of :data:`LABEL_KINDS`.
        identities: person id per row, or None where unknown.
        splits: one of :data:`SPLITS` per row, or None where the source has no split.
        root: the folder (or CSV file) the table was read from.
        source: ``"folder"``, ``"celeba"`` or ``"csv"``.
        prepared: the preparation manifest when the folder was written by
            ``facelab prepare`` (its face-preparation config), else None.
        skipped: reason -> count of files passed over while listing (hidden, not an image).
        sources: the original photo of each row when ``paths`` are face crops made from it
            (set by ``prepare_table``), else None: reports name the photo, not the crop.
    """

    paths: list[Path]
    labels: np.ndarray
    label_names: list[str]
    kind: str
    identities: list[str | None]
    splits: list[str | None]
    root: Path
    source: str
    prepared: dict | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    sources: list[Path] | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.kind not in LABEL_KINDS:
            raise ConfigError(f"kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if len(self.identities) != n or len(self.splits) != n or len(self.labels) != n:
            raise ValueError("paths, labels, identities and splits must have the same length")
        bad = {s for s in self.splits if s is not None and s not in SPLITS}
        if bad:
            raise DataError(f"unknown split(s) {sorted(bad)}; valid: {SPLITS}")
        if self.sources is not None and len(self.sources) != n:
            raise ValueError("sources must have one entry per row")

    def source_of(self, i: int) -> Path:
        """The photo row ``i`` came from (the crop itself where no source is known)."""
        return self.sources[i] if self.sources is not None else self.paths[i]

    def with_identities(self, identities: Sequence[str | None]) -> "SampleTable":
        return replace(self, identities=list(identities))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_identities(self) -> bool:
        return any(i is not None for i in self.identities)

    @property
    def has_splits(self) -> bool:
        return any(s is not None for s in self.splits)

    def subset(self, index: Sequence[int] | np.ndarray) -> "SampleTable":
        """Rows ``index`` (ints or a boolean mask) as a new table."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            identities=[self.identities[i] for i in idx],
            splits=[self.splits[i] for i in idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx],
        )

    def split(self, name: str) -> "SampleTable":
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; valid: {SPLITS}")
        return self.subset([i for i, s in enumerate(self.splits) if s == name])

    def select_attributes(self, names: Sequence[str]) -> "SampleTable":
        """Keep only the attribute columns ``names`` (CelebA's ``--attrs Smiling,Eyeglasses``)."""
        if self.kind != "attributes":
            raise DataError(f"{self.root}: attributes can only be selected from an attribute "
                            f"source (CelebA or a multi-column CSV); this one has classes {self.label_names}")
        unknown = [n for n in names if n not in self.label_names]
        if unknown:
            raise DataError(f"unknown attribute(s) {unknown}; valid names: {', '.join(self.label_names)}")
        cols = [self.label_names.index(n) for n in names]
        return replace(self, labels=self.labels[:, cols], label_names=list(names))

    def label_text(self, i: int) -> str:
        """Human-readable label of row ``i`` (class name, or the positive attributes)."""
        if self.kind == "classes":
            return self.label_names[int(self.labels[i])]
        on = [n for n, v in zip(self.label_names, self.labels[i]) if v]
        return ",".join(on) if on else "(none)"

