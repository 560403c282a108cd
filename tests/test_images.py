"""facelab.images: real photos in every format users have, and the broken files they also have."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelab.images import ImageError, decode_image, read_image, write_image


@pytest.fixture(scope="module")
def photo(celeba_wild: Path) -> Path:
    return celeba_wild / "img_celeba" / "003410.jpg"


@pytest.fixture(scope="module")
def photo_rgb(photo: Path) -> np.ndarray:
    return np.asarray(Image.open(photo).convert("RGB"))


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_real_jpeg_is_rgb_uint8(photo: Path, photo_rgb: np.ndarray) -> None:
    rgb = read_image(photo)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert np.array_equal(rgb, photo_rgb)


def test_greyscale_pgm_becomes_three_equal_channels(orl_faces: Path) -> None:
    rgb = read_image(orl_faces / "s1" / "1.pgm")
    assert rgb.shape == (112, 92, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.array_equal(rgb[..., 0], np.asarray(Image.open(orl_faces / "s1" / "1.pgm")))


def test_exif_orientation_is_applied(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    # Stored rotated on its side with orientation 6 ("rotate 90 CW to view"): read upright.
    stored = Image.fromarray(photo_rgb).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    rgb = read_image(path)
    assert rgb.shape == photo_rgb.shape
    assert np.abs(rgb.astype(int) - photo_rgb.astype(int)).mean() < 4


def test_cmyk_jpeg_is_converted(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(photo_rgb).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    rgb = read_image(path)
    assert rgb.shape == photo_rgb.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - photo_rgb.astype(int)).mean() < 6


def test_16bit_png_is_scaled_to_8bit(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    grey8 = np.asarray(Image.fromarray(photo_rgb).convert("L"))
    path = tmp_path / "deep.png"
    Image.fromarray(grey8.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.dtype == np.uint8
    assert np.abs(rgb[..., 0].astype(int) - grey8.astype(int)).max() <= 1


def test_palette_png(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    path = tmp_path / "palette.png"
    Image.fromarray(photo_rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    rgb = read_image(path)
    assert rgb.shape == photo_rgb.shape
    assert np.abs(rgb.astype(int) - photo_rgb.astype(int)).mean() < 8


def test_alpha_png_is_composited_on_white(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    rgba = np.dstack([photo_rgb, np.full(photo_rgb.shape[:2], 255, np.uint8)])
    rgba[:50, :50, 3] = 0  # a transparent corner
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    rgb = read_image(path)
    assert (rgb[:50, :50] == 255).all()
    assert np.array_equal(rgb[100:, 100:], photo_rgb[100:, 100:])


def _bad_files(tmp_path: Path, photo: Path) -> dict[str, tuple[Path, str]]:
    data = photo.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    corrupt = bytearray(data)
    corrupt[200:4000] = bytes(3800)
    (tmp_path / "corrupt.jpg").write_bytes(bytes(corrupt[:1000]) + b"garbage" * 50)
    (tmp_path / "notes.png").write_text("these are my notes, not a picture\n")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "does-not-exist.jpg")
    _bomb_png(tmp_path / "bomb.png", 30000, 30000)
    return {
        "empty": (tmp_path / "empty.jpg", "empty file"),
        "truncated": (tmp_path / "truncated.jpg", "truncated or corrupt"),
        "corrupt": (tmp_path / "corrupt.jpg", "corrupt"),
        "not image": (tmp_path / "notes.png", "not an image"),
        "folder": (tmp_path / "folder.jpg", "is a folder"),
        "missing": (tmp_path / "gone.jpg", "file not found"),
        "bomb": (tmp_path / "bomb.png", "too large"),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "corrupt", "not image", "folder", "missing", "bomb"])
def test_bad_files_raise_image_error_naming_file_and_reason(tmp_path: Path, photo: Path, kind: str) -> None:
    path, reason = _bad_files(tmp_path, photo)[kind]
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI shows it as a user error


def test_decode_image_of_bytes_matches_read_image(photo: Path) -> None:
    assert np.array_equal(decode_image(photo.read_bytes(), "upload"), read_image(photo))
    with pytest.raises(ImageError, match="upload: empty file"):
        decode_image(b"", "upload")


def test_write_image_is_lossless_for_png(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    path = write_image(tmp_path / "a" / "b.png", photo_rgb[:64, :80])
    assert np.array_equal(read_image(path), photo_rgb[:64, :80])
    assert not list((tmp_path / "a").glob(".*tmp"))
