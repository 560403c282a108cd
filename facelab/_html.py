"""Self-contained HTML reports and picture grids shared by prepare, inspect, evaluate, explain.

Reports embed every image as a data URI and use no external CSS/JS, so they open
offline and can be mailed as one file.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from facelab._io import write_bytes, write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
     padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #eee;padding-bottom:.3rem}
h2{font-size:1.25rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f6f6f6} td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem .8rem;margin:.5rem 0}
.ok{background:#eef9ee;border-left:4px solid #3a3;padding:.5rem .8rem;margin:.5rem 0}
.muted{color:#777;font-size:.85rem}
"""


def escape(text: Any) -> str:
    return html.escape(str(text))


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


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str = "", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{data_uri(png)}" alt="{escape(alt)}"{w}>'


def table(rows: Iterable[Sequence[Any]], columns: Sequence[str], floatfmt: str = "{:.3f}") -> str:
    """An HTML table; floats formatted with ``floatfmt``."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else floatfmt.format(v)
        return escape(v)

    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Sequence[tuple[str, str]], intro: str = "") -> str:
    """A complete HTML document: ``sections`` = [(heading, inner_html), ...]."""
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>", intro]
    for heading, inner in sections:
        parts.append(f"<section><h2>{escape(heading)}</h2>{inner}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(path: str | Path, title: str, sections: Sequence[tuple[str, str]], intro: str = "") -> Path:
    return write_text(path, page(title, sections, intro))


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Letterbox ``img`` into a size x size RGB tile."""
    from PIL import Image

    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(img[..., :3])).resize((nw, nh), Image.BILINEAR))
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
