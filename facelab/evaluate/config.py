"""What ``facelab evaluate`` is asked to do (:class:`EvaluateConfig`) and what it returns
(:class:`EvalResult`); no computation here, so the CLI can build its options from it cheaply."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab import metrics as M
from facelab.data import SPLITS
from facelab.errors import ConfigError
from facelab.templates import fmt as _fmt

DEFAULT_SUBGROUPS = ("Male", "Young")
#: CelebA attributes whose labels are opinions of the annotators, not facts about the photo.
SUBJECTIVE_ATTRIBUTES = ("Attractive", "Young", "Chubby", "Big_Nose", "Big_Lips", "Pointy_Nose",
                         "Oval_Face", "Narrow_Eyes", "Pale_Skin", "Heavy_Makeup", "Bags_Under_Eyes",
                         "Arched_Eyebrows", "Bushy_Eyebrows", "High_Cheekbones")
#: ``tune_split="auto"`` tunes on the valid split only when it is this broad.
MIN_TUNE_PEOPLE = 10
MIN_TUNE_PHOTOS = 200


@dataclass
class EvaluateConfig:
    """What to evaluate and how."""

    split: str | None = "test"
    """Split to report on when the source has splits; None = every photo."""
    tune_split: str | None = "auto"
    """Split on which decision thresholds are tuned (binary / multilabel); None = no tuning;
    ``auto`` = the valid split when it holds at least :data:`MIN_TUNE_PEOPLE` people (or, with
    no identities, :data:`MIN_TUNE_PHOTOS` photos). Thresholds tuned on celeba-mini's 4 valid
    people went to 0.03 and 0.95 and cost balanced accuracy on the test people (0.788 -> 0.777)."""
    tune_metric: str = "balanced_accuracy"
    """What the tuned thresholds maximise: balanced_accuracy (the default: tuning for accuracy
    on a small, imbalanced validation set pushes a threshold towards the majority answer),
    accuracy or f1."""
    save_thresholds: bool = True
    """Write the tuned thresholds into the run's bundle.json (task.thresholds)."""
    subgroups: tuple[str, ...] | None = None
    """Attribute columns (or ``identity``) to split accuracy by; None = Male, Young where present."""
    top_k: int = 16
    """Faces per top-loss grid."""
    batch_size: int = 64
    """Crops per forward pass."""
    bins: int = 10
    """Reliability-diagram bins."""
    min_group: int = 5
    """Subgroups with fewer photos are listed but left out of the worst-minus-best gap."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("split", "tune_split"):
            value = getattr(self, name)
            if value is not None and value not in SPLITS and not (name == "tune_split" and value == "auto"):
                raise ConfigError(f"{name} must be one of {SPLITS} or None, got {value!r}")
        if self.tune_metric not in M.THRESHOLD_METRICS:
            raise ConfigError(f"tune_metric must be one of {M.THRESHOLD_METRICS}, got {self.tune_metric!r}")
        if self.top_k < 0 or self.batch_size < 1 or self.bins < 2 or self.min_group < 1:
            raise ConfigError("top_k >= 0, batch_size >= 1, bins >= 2 and min_group >= 1 are required")
        if self.subgroups is not None:
            self.subgroups = tuple(self.subgroups)


@dataclass
class EvalResult:
    """What :func:`evaluate` produced."""

    out: Path
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        base = m.get("baseline", {})
        lines = [f"{m['n']} photos: balanced accuracy {m['balanced_accuracy']:.3f} (a constant answer: "
                 f"{base.get('balanced_accuracy', float('nan')):.3f}), ROC-AUC {_fmt(m['auc'])}, accuracy "
                 f"{m['accuracy']:.3f} (best constant answer {base.get('accuracy', float('nan')):.3f}), "
                 f"ECE {m['ece']:.3f}"]
        lines += [f"  WEAK {name}: {why}" for name, why in m.get("weak_labels", {}).items()]
        return "\n".join(lines)
