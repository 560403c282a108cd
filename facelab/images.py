"""Safe image decoding: any photo a user may have -> RGB uint8, or an ImageError saying why not.

Handles what real folders contain: EXIF-rotated phone photos, CMYK JPEGs, 16-bit and
palette/alpha PNGs, greyscale PGMs, and the broken ones (zero-byte, truncated, corrupt,
not an image at all, decompression-bomb sized). Every failure is an :class:`ImageError`
whose message names the file, what is wrong and what to do.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Literal, overload

import numpy as np

from facelab._io import os_hint, os_reason, write_bytes
from facelab.errors import DataError

log = logging.getLogger(__name__)

#: Photos with more pixels than this are refused (below PIL's decompression-bomb guard: 89 Mpx
#: for a warning and 179 Mpx for an error; a real face photo is far below either).
MAX_PIXELS = 80_000_000


#: Formats an upload may be in (``decode_image(..., formats=UPLOAD_FORMATS)``): checked from the
#: file's first bytes before Pillow opens it, so no other decoder (EPS, TGA, JPEG 2000, ...)
#: is ever reached. GIF gives its first frame. TIFF is left out: libtiff's many codecs are
#: a large attack surface for a format no camera or browser sends.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG\r\n\x1a\n", "PNG"), (8, b"WEBP", "WEBP"),
    (0, b"BM", "BMP"), (0, b"GIF87a", "GIF"), (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"), (0, b"%!PS", "EPS"), (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"), (0, b"\x00\x00\x00\x0cjP  ", "JPEG2000"), (0, b"\xff\x4f\xff\x51", "JPEG2000"),
    (4, b"ftypheic", "HEIC"), (4, b"ftypavif", "AVIF"), (0, b"\x01\xda", "SGI"), (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"), (0, b"qoif", "QOI"),
)


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded photo after its EXIF rotation, from its header alone;
    (0, 0) when Pillow cannot tell (decoding it says why)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
    except Exception:  # noqa: BLE001 - only a size for a report; decoding reports the error
        return 0, 0


def sniff_format(data: bytes) -> str | None:
    """The image format named by ``data``'s magic bytes (``"JPEG"``, ``"PNG"``, ...), or None.

    Only a format's fixed signature is read; nothing is decoded. WebP needs its RIFF header too."""
    for offset, magic, fmt in _MAGIC:
        if data[offset:offset + len(magic)] == magic and (fmt != "WEBP" or data[:4] == b"RIFF"):
            return fmt
    return None


class ImageError(DataError):
    """A photo could not be read. ``path`` is the file, ``reason`` a short cause (for reports)."""

    def __init__(self, path: str | Path, reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        msg = f"{path}: {reason}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an upright RGB uint8 array of shape (H, W, 3).

    EXIF orientation is applied; greyscale, CMYK, 16-bit, palette and alpha images are
    converted (transparent areas become white). Raises :class:`ImageError` on anything
    that is not a readable image.
    """
    return decode_image(read_bytes(path), name=str(path), max_pixels=max_pixels)


def read_bytes(path: str | Path) -> bytes:
    """A photo file's bytes, or an :class:`ImageError` that says why they cannot be read
    (:func:`facelab._io.os_reason`, with the system's words for a link loop)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(path, os_reason(exc, explain_loops=False), os_hint(exc)) from None


@overload
def decode_image(data: bytes, name: str = ..., max_pixels: int = ..., min_side: int = ...,
                 return_full_size: Literal[False] = ..., formats: tuple[str, ...] | None = ...) -> np.ndarray: ...


@overload
def decode_image(data: bytes, name: str = ..., max_pixels: int = ..., min_side: int = ..., *,
                 return_full_size: Literal[True], formats: tuple[str, ...] | None = ...,
                 ) -> tuple[np.ndarray, tuple[int, int]]: ...


def decode_image(data: bytes, name: str = "<image>", max_pixels: int = MAX_PIXELS, min_side: int = 0,
                 return_full_size: bool = False, formats: tuple[str, ...] | None = None,
                 ) -> np.ndarray | tuple[np.ndarray, tuple[int, int]]:
    """Decode image bytes (an upload, a file's content) like :func:`read_image`.

    ``min_side`` > 0 lets a JPEG decode at a reduced DCT scale (1/2, 1/4, 1/8: several
    times faster) as long as its longest side stays >= ``min_side``; other formats decode
    in full. With ``return_full_size`` the result is ``(rgb, (width, height))`` of the
    full-resolution image, so coordinates can be mapped back to it.

    ``formats`` (e.g. :data:`UPLOAD_FORMATS`) restricts decoding to those formats: the
    magic bytes are checked first (an ImageError whose reason starts with ``unsupported
    format`` or ``not an image`` otherwise), and Pillow is asked for those decoders alone.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError(name, "empty file (0 bytes)", "re-copy or re-download it")
    if formats is not None:
        formats = (_check_format(data, name, formats),)  # that format's decoder alone
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(name, f"too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit "
                                       f"{max_pixels / 1e6:.0f} Mpx; possible decompression bomb)",
                                 "downscale the photo first")
            if 0 < min_side <= max(w, h) // 2:
                k = min_side / max(w, h)
                img.draft(None, (max(1, int(np.ceil(w * k))), max(1, int(np.ceil(h * k)))))
            img.load()
            upright = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img  # rotate/flip
            rgb = _to_rgb(upright)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unknown or corrupt format)",
                         "remove it or replace it with a JPEG/PNG") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"too large (decompression bomb guard: {exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(name, f"truncated or corrupt image data ({exc})", "re-copy the file") from None
    if rgb.size == 0:
        raise ImageError(name, "image has no pixels")
    return (rgb, (w, h)) if return_full_size else rgb


def _check_format(data: bytes, name: str, formats: tuple[str, ...]) -> str:
    found = sniff_format(data)
    allowed = ", ".join(formats)
    if found is None:
        raise ImageError(name, "not an image (unknown or corrupt format)", f"send one of: {allowed}")
    if found not in formats:
        raise ImageError(name, f"unsupported format {found}", f"send one of: {allowed}")
    return found


def _to_rgb(img) -> np.ndarray:  # noqa: ANN001 - PIL.Image.Image
    """Any PIL mode -> RGB uint8 (16-bit scaled down, alpha composited on white)."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.stack([grey] * 3, axis=-1)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """RGB -> BGR (OpenCV's order), contiguous."""
    return np.ascontiguousarray(rgb[..., ::-1])


def write_image(path: str | Path, rgb: np.ndarray, quality: int = 95) -> Path:
    """Write an RGB uint8 array atomically; the format follows the extension."""
    from PIL import Image

    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(
        path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format=fmt, **kwargs)
    return write_bytes(path, buf.getvalue())
