"""Pictures and the report: heat maps over crops and photos, the feature-map and filter
grids, and one self-contained ``explain.html`` (``templates/explain_report.html``: images as
data URIs)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facelab.bundle import Predictor
from facelab import templates
from facelab._html import image_grid, png_bytes
from facelab._io import write_bytes
from facelab.explain.config import ExplainConfig, Explanation
from facelab.explain.features import feature_maps, first_layer_filters

if TYPE_CHECKING:  # pragma: no cover
    from facelab.detect import Face


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` with the heat map (jet colours) blended in where the map is non-zero."""
    import cv2

    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    a = (alpha * np.clip(cam, 0, 1) ** 0.5)[..., None]
    return (rgb * (1 - a) + heat * a).astype(np.uint8)


def _draw_box(rgb: np.ndarray, face: "Face") -> np.ndarray:
    import cv2

    out = rgb.copy()
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 255), max(1, rgb.shape[1] // 300))
    return out


def _caption(e: Explanation, method: str) -> str:
    """What a heat map shows; an empty map says why it is empty."""
    if e.cam.max() > 0:
        return f"{method}: {e.label} {e.prob:.2f}"
    if not e.predicted:
        return f"no evidence for {e.label}"
    return f"{method} map empty at p={e.prob:.2f}" + (": try hirescam" if method != "hirescam" else "")


def _map_tile(m: np.ndarray, side: int = 64) -> np.ndarray:
    """One channel -> a grey tile, nearest-neighbour upscaled so small maps stay crisp."""
    lo, hi = float(m.min()), float(m.max())
    g = np.uint8(255 * (m - lo) / (hi - lo)) if hi > lo else np.zeros(m.shape, np.uint8)
    k = max(1, side // max(m.shape))
    return np.kron(g, np.ones((k, k), np.uint8))


def feature_map_grid(maps: list[tuple[str, np.ndarray]], channels: int) -> np.ndarray:
    """One row per stage, ``channels`` channels each; the row's caption under its first tile."""
    images, captions = [], []
    for caption, m in maps:
        for c in range(channels):
            images.append(_map_tile(m[c]) if c < len(m) else None)
            captions.append(caption if c == 0 else f"ch {c}")
    return image_grid(images, captions, cols=channels, tile=72, caption_lines=3)


def filters_grid(filters: np.ndarray, limit: int = 64) -> np.ndarray:
    tiles = [np.kron(f, np.ones((max(1, 48 // f.shape[0]),) * 2 + (1,), np.uint8)) for f in filters[:limit]]
    return image_grid(tiles, None, cols=16, tile=48)


def write_outputs(out: Path, predictor: Predictor, items: list[Explanation], config: ExplainConfig) -> dict[str, Path]:
    """One picture per face (crop, its map, the map on the photo), a grid of all faces, the
    feature maps and filters, and ``explain.html`` holding them all; returns name -> file."""
    files: dict[str, Path] = {}
    sections = []
    for i, e in enumerate(items):
        panels = [e.crop, overlay(e.crop, e.cam, config.alpha)]
        if e.original is not None and e.cam_original is not None and e.face is not None:
            panels.append(_draw_box(overlay(e.original, e.cam_original, config.alpha), e.face))
        what = _caption(e, config.method)
        png = png_bytes(image_grid(panels, ["aligned crop", what, "on the photo"],
                                   cols=3, tile=256, caption_lines=1))
        files[f"cam_{i}"] = write_bytes(out / f"{i:03d}_{Path(e.path).stem}_{config.method}.png", png)
        sections.append((f"{Path(e.path).name}: {e.label} (p={e.prob:.2f})", png, e.label))
    if len(items) > 1:
        grid = png_bytes(image_grid([overlay(e.crop, e.cam, config.alpha) for e in items],
                                    [f"{e.label[:14]} {e.prob:.2f}" for e in items], cols=8, tile=128, caption_lines=1))
        files["grid"] = write_bytes(out / f"{config.method}_grid.png", grid)
        sections.insert(0, ("All photos", grid, "grid"))
    if config.feature_maps:
        maps = png_bytes(feature_map_grid(feature_maps(predictor, items[0].crop, config.blocks), config.channels))
        filters = png_bytes(filters_grid(first_layer_filters(predictor)))
        files["feature_maps"] = write_bytes(out / "feature_maps.png", maps)
        files["filters"] = write_bytes(out / "filters.png", filters)
        sections += [(f"Feature maps of {Path(items[0].path).name}: after convolution, activation and pooling",
                      maps, "feature maps"), ("First-layer filters", filters, "filters")]
    model = predictor.info.model.name or "?"
    files["html"] = templates.write(out / "explain.html", "explain_report.html", title="facelab explain",
                                    model=model, method=config.method, sections=sections)
    return files
