"""Augmentation presets (fastai's ``aug_transforms`` defaults) applied to whole batches.

Like fastai, the geometric part (flip, rotate, zoom, perspective warp) is ONE resampling
per image through a combined sampling grid, and lighting (brightness + contrast) is a
cheap per-image affine change of the pixel values, so augmenting a batch costs about as
much as one ``grid_sample``. It runs on whatever device the batch is on; the random
numbers come from a CPU generator in one draw, so results do not depend on the device.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facelab._html import save_grid
from facelab.data import is_image_file, load_source
from facelab.errors import ConfigError
from facelab.images import read_image
from facelab.prepare import prepare_table


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes made to each training image (fastai's defaults)."""

    flip: bool = True
    """Mirror left-right with probability 0.5 (faces are nearly symmetric)."""
    max_rotate: float = 10.0
    """Largest rotation in degrees, either way."""
    max_zoom: float = 1.1
    """Largest zoom-in factor (1.0 = no zoom)."""
    max_lighting: float = 0.2
    """Largest brightness/contrast change (fraction)."""
    max_warp: float = 0.2
    """Largest perspective warp (fraction of the image)."""
    p_affine: float = 0.75
    """Probability that an image gets rotate/zoom/warp."""
    p_lighting: float = 0.75
    """Probability that an image gets a lighting change."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_rotate <= 180:
            raise ConfigError(f"max_rotate must be in [0, 180] degrees, got {self.max_rotate}")
        if self.max_zoom < 1.0:
            raise ConfigError(f"max_zoom must be >= 1.0, got {self.max_zoom}")
        for name in ("max_lighting", "max_warp", "p_affine", "p_lighting"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        return bool(self.flip or (self.p_affine > 0 and (self.max_rotate or self.max_zoom > 1 or self.max_warp))
                    or (self.p_lighting > 0 and self.max_lighting > 0))


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(flip=False, max_rotate=0, max_zoom=1.0, max_lighting=0, max_warp=0,
                          p_affine=0, p_lighting=0),
    "light": AugmentConfig(max_rotate=5, max_zoom=1.05, max_lighting=0.1, max_warp=0.0),
    "fastai": AugmentConfig(),
    "strong": AugmentConfig(max_rotate=20, max_zoom=1.25, max_lighting=0.4, max_warp=0.3, p_affine=0.9,
                            p_lighting=0.9),
}


def get_preset(name: str, **overrides: Any) -> AugmentConfig:
    """Preset ``name`` with some fields changed; unknown names or fields raise ConfigError
    listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; valid: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(AugmentConfig)})
    if unknown:
        raise ConfigError(f"unknown augmentation option(s) {unknown}; valid: {', '.join(f.name for f in fields(AugmentConfig))}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


#: Random numbers drawn per image: affine on, angle, zoom, flip, shift x, shift y, warp x,
#: warp y, lighting on, brightness, contrast.
DRAWS = 11


def draw(n: int, g: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, :data:`DRAWS`) uniform [0, 1) numbers from the CPU generator ``g``, moved to
    ``device`` in ONE copy (pinned, non-blocking on a GPU): the same seed gives the same
    augmentation on any device, and augmenting a GPU batch never makes the host wait for
    the GPU (a copy per parameter from pageable memory would, eleven times a batch)."""
    u = torch.rand((n, DRAWS), generator=g)
    device = torch.device(device)
    if device.type == "cuda":
        return u.pin_memory().to(device, non_blocking=True)
    return u.to(device)


def _between(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return u * (hi - lo) + lo


def sampling_grid(n: int, h: int, w: int, cfg: AugmentConfig, u: torch.Tensor) -> torch.Tensor:
    """One (n, h, w, 2) grid combining flip, rotation, zoom and perspective warp, from the
    draws ``u`` (:func:`draw`, on the batch's device)."""
    device = u.device
    on = (u[:, 0] < cfg.p_affine).float()
    angle = _between(u[:, 1], -cfg.max_rotate, cfg.max_rotate) * math.pi / 180 * on
    scale = 1.0 / (1 + (_between(u[:, 2], 1.0, cfg.max_zoom) - 1) * on)
    flip = torch.where(u[:, 3] < (0.5 if cfg.flip else 0.0), -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    # a zoomed-in view may look anywhere inside the image
    slack = 1 - scale
    theta[:, 0, 2] = _between(u[:, 4], -1, 1) * slack
    theta[:, 1, 2] = _between(u[:, 5], -1, 1) * slack
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    if cfg.max_warp > 0:
        # perspective: divide by a plane tilted in x and y (a projective transform)
        px = _between(u[:, 6], -cfg.max_warp, cfg.max_warp) * on * 0.5
        py = _between(u[:, 7], -cfg.max_warp, cfg.max_warp) * on * 0.5
        base = F.affine_grid(torch.eye(2, 3, device=device).expand(n, 2, 3), [n, 3, h, w], align_corners=False)
        denom = 1 + px.view(n, 1, 1) * base[..., 0] + py.view(n, 1, 1) * base[..., 1]
        grid = grid / denom.unsqueeze(-1)
    return grid


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Augment a float batch (N, 3, H, W) with values in [0, 1], on the batch's device;
    returns the same shape.

    ``g`` is a CPU generator: its numbers are drawn on the CPU and moved in one copy
    (:func:`draw`), so the same seed gives the same augmentations on any device and a GPU
    batch is augmented without the host waiting for the GPU.
    """
    if not cfg.active:
        return x
    n, _, h, w = x.shape
    u = draw(n, g, x.device)
    grid = sampling_grid(n, h, w, cfg, u).to(x.dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.max_lighting > 0 and cfg.p_lighting > 0:
        on = (u[:, 8] < cfg.p_lighting).view(n, 1, 1, 1)
        bright = _between(u[:, 9], -cfg.max_lighting, cfg.max_lighting).to(x.dtype).view(n, 1, 1, 1) * 0.5
        contrast = torch.exp(_between(u[:, 10], -cfg.max_lighting, cfg.max_lighting)).to(x.dtype).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        lit = (x - mean) * contrast + mean + bright
        x = torch.where(on, lit, x).clamp_(0, 1)
    return x


def preview(images: Sequence[np.ndarray], cfg: AugmentConfig, out: str | Path, per_image: int = 8,
            size: int = 128, seed: int = 0) -> Path:
    """A PNG grid: each row one photo, first the original then ``per_image - 1`` augmentations."""
    import cv2

    g = torch.Generator().manual_seed(seed)
    tiles: list[np.ndarray] = []
    captions: list[str] = []
    for img in images:
        img = cv2.resize(np.ascontiguousarray(img[..., :3]), (size, size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(per_image - 1, 1, 1, 1)
        aug = augment_batch(x, cfg, g).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
        tiles += [img, *aug]
        captions += ["original", *[f"augmented {i + 1}" for i in range(per_image - 1)]]
    return save_grid(out, tiles, captions, cols=per_image, tile=size, caption_lines=1)


def preview_images(source: str | Path, n: int = 4) -> list[np.ndarray]:
    """The first ``n`` face crops of a data source (through face preparation, as training
    sees them), or the single image ``source``."""
    source = Path(source)
    if source.is_file() and is_image_file(source):
        return [read_image(source)]
    table = load_source(source)
    table = table.subset(range(min(n, len(table))))
    if table.prepared is None:
        table = prepare_table(table, None, progress=False)
    return [read_image(p) for p in table.paths]
