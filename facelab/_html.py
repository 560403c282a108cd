"""Pictures for reports: PNG bytes of arrays and matplotlib figures, and captioned grids of faces.

The pages themselves are jinja2 templates (:mod:`facelab.templates`), which embed these
pictures as data URIs so a report opens offline and can be mailed as one file.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._io import write_bytes


def png_bytes(rgb: np.ndarray) -> bytes:
    """RGB (or greyscale) uint8 array -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure -> PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Letterbox ``img`` into a size x size RGB tile."""
    from PIL import Image

    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(img[..., :3])).resize((nw, nh), Image.Resampling.BILINEAR))
    tile = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    tile[y:y + nh, x:x + nw] = small
    return tile


def image_grid(images: Sequence[np.ndarray | None], captions: Sequence[str] | None = None,
               cols: int = 8, tile: int = 128, caption_lines: int = 2) -> np.ndarray:
    """Tile images (any sizes; None = blank) into one RGB picture with captions below each.

    Returns an RGB uint8 array; pair with :func:`png_bytes` or :func:`save_grid`.
    """
    from PIL import Image, ImageDraw, ImageFont

    n = max(1, len(images))
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    line_h = 12
    cap_h = line_h * caption_lines + 4 if captions else 0
    cell_w, cell_h = tile + 6, tile + cap_h + 6
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    max_chars = max(8, tile // 6)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = c * cell_w + 3, r * cell_h + 3
        if img is not None:
            canvas.paste(Image.fromarray(_fit(np.asarray(img), tile)), (x, y))
        else:
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=(200, 200, 200))
        if captions and i < len(captions):
            text = str(captions[i])
            lines = [text[j:j + max_chars] for j in range(0, len(text), max_chars)][:caption_lines]
            for k, line in enumerate(lines):
                draw.text((x, y + tile + 2 + k * line_h), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_grid(path: str | Path, images: Sequence[np.ndarray | None], captions: Sequence[str] | None = None,
              **kwargs: Any) -> Path:
    """:func:`image_grid` written atomically as a PNG file."""
    return write_bytes(path, png_bytes(image_grid(images, captions, **kwargs)))
