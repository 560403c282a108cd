"""Settings of the face-embed identity model and the names every people module shares."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from facelab.bundle import BUNDLE_DIR
from facelab.errors import ConfigError

__all__ = ["BACKEND", "BUNDLE_DIR", "HEADS", "OPEN_SET_RULES", "UNKNOWN", "FaceEmbedConfig"]


BACKEND = "face-embed"
UNKNOWN = "unknown"
HEADS = ("logreg", "knn")

#: Open-set scores (see :func:`open_set_distance`). ``centroid`` is the default: on
#: celeba-mini it turned away fewer known photos at the same share of strangers let in
#: (docs/people.md); runs whose bundle names no rule were calibrated with ``nearest``.
OPEN_SET_RULES = ("centroid", "nearest")

@dataclass
class FaceEmbedConfig:
    """Settings of the face-embed identity model (read from the TrainConfig where it has them)."""

    head: str = "logreg"
    """Classifier on the embeddings: ``logreg`` (logistic regression) or ``knn``."""
    knn_k: int = 3
    """knn head: the distance to a person is the mean of their ``knn_k`` nearest photos."""
    C: float = 10.0
    """logreg head: inverse regularisation strength."""
    valid_fraction: float = 0.2
    """Share of each person's photos held out to MEASURE top-name accuracy (people with
    one photo keep it); the final gallery and head then use every photo, and the unknown
    threshold is calibrated leave-one-out over all of them. 0 = no accuracy measure."""
    target_far: float | None = None
    """Calibrate the unknown threshold for this false-accept rate (share of strangers let
    in, e.g. 0.01); None picks the threshold with the fewest errors (false-accept rate +
    false-reject rate). The trade-off at other targets is in ``bundle.json["open_set"]``."""
    unknown_score: str = "centroid"
    """Open-set score compared with the threshold: ``centroid`` (distance to the nearest
    person's mean embedding) or ``nearest`` (to the nearest enrolled photo)."""
    seed: int = 0
    """Random seed of the train/valid split."""
    overwrite: bool = False
    """Replace an existing run in the run folder (otherwise that is an error)."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"unknown face-embed head {self.head!r}; valid: {', '.join(HEADS)}")
        if self.knn_k < 1:
            raise ConfigError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.C <= 0:
            raise ConfigError(f"C must be > 0, got {self.C}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.unknown_score not in OPEN_SET_RULES:
            raise ConfigError(f"unknown unknown_score {self.unknown_score!r}; valid: {', '.join(OPEN_SET_RULES)}")
        if self.target_far is not None and not 0.0 <= self.target_far <= 1.0:
            raise ConfigError(f"target_far must be in [0, 1] or None, got {self.target_far}")

    @classmethod
    def from_train_config(cls, config: Any) -> "FaceEmbedConfig":
        """Pick the matching fields (same names, or ``face_embed``/``model_kwargs`` dicts)
        out of the train stage's TrainConfig (or a plain dict)."""
        if config is None:
            return cls()
        if isinstance(config, FaceEmbedConfig):
            return config
        src = config if isinstance(config, dict) else vars(config)
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in src.items() if k in names and v is not None}
        for nested in ("model_kwargs", "face_embed"):
            extra = dict(src.get(nested) or {})
            unknown = sorted(set(extra) - names)
            if unknown:
                raise ConfigError(f"unknown face-embed option(s) {unknown}; valid: {sorted(names)}")
            kw.update(extra)
        for alias in ("val_fraction", "valid_split"):
            if isinstance(src.get(alias), float):
                kw.setdefault("valid_fraction", src[alias])
        return cls(**kw)
