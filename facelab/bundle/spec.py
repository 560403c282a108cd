"""What a model takes as input, held in one object (timm's ``pretrained_cfg``, CLIP's
``preprocess``): square RGB crops of ``size`` pixels, scaled to [0, 1] and normalised per
channel with ``mean``/``std``. Training (after augmentation), every predictor, explain and
the first layer of the exported ONNX graph use :meth:`InputSpec.preprocess`; nothing else
normalises pixels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facelab.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["InputSpec", "resize_crops"]


def resize_crops(crops: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Aligned RGB uint8 crops (any size; grey allowed) -> one uint8 (N, size, size, 3)
    batch: area interpolation down, linear up. Training uses exactly this too."""
    import cv2

    out = np.empty((len(crops), size, size, 3), np.uint8)
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim == 2:
            crop = np.stack([crop] * 3, axis=-1)
        if crop.shape[:2] != (size, size):
            shrink = crop.shape[0] > size
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = crop[..., :3]
    return out


@dataclass(frozen=True)
class InputSpec:
    """A model's input: ``size`` x ``size`` RGB, normalised as ``(x / 255 - mean) / std``."""

    size: int
    """Side of the square crop the network sees, in pixels."""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel mean of [0, 1] pixel values subtracted before the network (the backbone's
    pretraining statistics: ImageNet's for torchvision/timm, 0.5 for TF-ported EfficientNet-Lite)."""
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel standard deviation the centred values are divided by."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.size < 8 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"bad input spec {self}: the size must be >= 8 pixels, with three means and "
                              f"three positive standard deviations")

    # ------------------------------------------------------------------ (de)serialisation

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        """The ``input`` entry of ``bundle.json``."""
        return cls(int(d["size"]), tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std)))

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    # ------------------------------------------------------------------ the one preprocessing

    def batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Crops of any size -> uint8 (N, size, size, 3), resized as training resizes."""
        return resize_crops(crops, self.size)

    @staticmethod
    def to_unit(batch: "torch.Tensor") -> "torch.Tensor":
        """uint8 NHWC -> float NCHW in [0, 1] (augmentation works on this)."""
        return batch.permute(0, 3, 1, 2).float().div(255)

    def normalise(self, x: "torch.Tensor") -> "torch.Tensor":
        """float NCHW in [0, 1] -> the network's input."""
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def preprocess(self, batch: "torch.Tensor | np.ndarray", device: Any = None) -> "torch.Tensor":
        """uint8 NHWC crops already at ``size`` (tensor or array) -> normalised float NCHW,
        on ``device`` when given (the uint8 batch is moved, a quarter of the float bytes)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        if device is not None:
            x = x.to(device, non_blocking=True)
        return self.normalise(self.to_unit(x))

    def module(self) -> "torch.nn.Module":
        """:meth:`preprocess` as a module: the first layer of an exported graph."""
        return _Preprocess(self)


@functools.lru_cache(maxsize=1)
def _preprocess_module_class() -> type:
    import torch

    class Preprocess(torch.nn.Module):
        """uint8 NHWC crops -> normalised float NCHW (:meth:`InputSpec.preprocess`)."""

        def __init__(self, spec: InputSpec) -> None:
            super().__init__()
            self.spec = spec

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return self.spec.preprocess(crops)

    return Preprocess


def _Preprocess(spec: InputSpec) -> "torch.nn.Module":  # noqa: N802 - a class built on first use: torch stays lazy
    return _preprocess_module_class()(spec)
