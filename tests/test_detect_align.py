"""Detectors and alignment on real uncropped and aligned CelebA photos."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facelab.align import (align_face, balance_light, similarity_transform, suppress_background,
                           template_points, transform_points)
from facelab.detect import Face, check_detector_options, create_detector, list_detectors
from facelab.errors import ConfigError
from facelab.images import read_image

WILD_SAMPLE = ("003410.jpg", "005840.jpg", "007983.jpg")


@pytest.fixture(scope="module")
def wild_photos(celeba_wild: Path) -> list[np.ndarray]:
    """Uncropped photos shrunk to at most 480 px (yuface's sweet spot; keeps the test fast)."""
    import cv2

    out = []
    for name in WILD_SAMPLE:
        rgb = read_image(celeba_wild / "img_celeba" / name)
        s = 480 / max(rgb.shape[:2])
        out.append(cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA))
    return out


def test_registry_lists_the_four_detectors_and_rejects_unknown_names() -> None:
    assert {"haar", "dlib-hog", "yuface", "mtcnn"} <= set(list_detectors())
    with pytest.raises(ConfigError, match="unknown detector 'retina'.*dlib-hog.*haar.*mtcnn.*yuface"):
        create_detector("retina")


@pytest.mark.parametrize("name", ["yuface", "mtcnn", "dlib-hog", "haar"])
def test_every_detector_finds_the_face_with_ordered_landmarks(name: str, celeba_mini: Path) -> None:
    # Official aligned CelebA photos: one upright frontal face in the middle.
    rgb = read_image(celeba_mini / "img_align_celeba" / sorted((celeba_mini / "img_align_celeba").iterdir())[0].name)
    options = {"min_neighbors": 5, "min_size": 40} if name == "haar" else {}
    faces = create_detector(name, **options).detect(rgb)
    assert faces, f"{name} found no face"
    face = max(faces, key=lambda f: f.area)
    lm = face.landmarks
    assert lm.shape == (5, 2) and lm.dtype == np.float32
    x0, y0, x1, y1 = face.box
    assert 20 < (x0 + x1) / 2 < 160 and 40 < (y0 + y1) / 2 < 190
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]          # viewer's left first
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()          # eyes above nose above mouth
    # CelebA aligned photos put the eyes near y=112 and the mouth near y=152 (178x218 frame).
    assert np.abs(lm[:2, 1] - 112).max() < 12 and np.abs(lm[3:, 1] - 152).max() < 12


def test_yuface_finds_faces_in_uncropped_photos(wild_photos: list[np.ndarray]) -> None:
    det = create_detector("yuface")
    for rgb in wild_photos:
        faces = det.detect(rgb)
        assert faces
        f = max(faces, key=lambda f: f.area)
        h, w = rgb.shape[:2]
        assert 0 <= f.landmarks[:, 0].min() and f.landmarks[:, 0].max() <= w
        assert 0 <= f.landmarks[:, 1].min() and f.landmarks[:, 1].max() <= h


def test_yuface_gives_the_librarys_faces_and_does_not_leak(celeba_mini: Path,
                                                            wild_photos: list[np.ndarray]) -> None:
    """The yuface detector calls libfacedetection with a buffer it owns: the same 15 values
    per face as yuface.c_detect (its 16th is never written), without c_detect's leak of a
    36 KiB buffer per call (3000 calls leaked ~105 MB before)."""
    import yuface

    from facelab.detect import _YUFACE_BUFFER_BYTES, _yuface_rows

    aligned = [read_image(p) for p in sorted((celeba_mini / "img_align_celeba").glob("*.jpg"))[:30]]
    buffer = np.zeros(_YUFACE_BUFFER_BYTES, np.uint8)
    faces = 0
    for rgb in [*aligned, *wild_photos]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        theirs = np.asarray(yuface.c_detect(bgr)).reshape(-1, 16)
        ours = _yuface_rows(bgr, buffer)
        assert np.array_equal(ours[:, :15], theirs[:, :15])
        faces += len(ours)
    assert faces >= len(aligned) + len(wild_photos)

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    det, small = create_detector("yuface"), aligned[0][::2, ::2]
    for _ in range(100):
        det.detect(small)
    before = rss_mb()
    for _ in range(3000):
        det.detect(small)
    assert rss_mb() - before < 10, f"RSS grew {rss_mb() - before:.1f} MB over 3000 detections"


def test_detector_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="scale_factor must be > 1"):
        create_detector("haar", scale_factor=1.0)
    with pytest.raises(ConfigError, match="detector yuface: unknown option 'min_neighbors'; valid options: conf, threads"):
        create_detector("yuface", min_neighbors=3)
    with pytest.raises(ConfigError, match=r"unknown option 'minneighbours' \(did you mean min_neighbors\?\)"):
        create_detector("haar", minneighbours=3)
    with pytest.raises(ConfigError, match="conf must be a number, got 'high'"):
        create_detector("yuface", conf="high")
    haar = create_detector("haar", minNeighbors=4, scaleFactor=1.15, minSize=[30, 40])  # OpenCV's spellings
    assert (haar.min_neighbors, haar.scale_factor, haar.min_size) == (4, 1.15, (30, 40))
    assert check_detector_options("dlib-hog", {"upsample_num_times": 1}) == {"upsample": 1}


def test_haar_detectors_built_at_once_in_fresh_threads() -> None:
    """Threads of a fresh interpreter that build Haar detectors together (each importing
    OpenCV) all get one: cv2.data was missing in all but one of them."""
    code = textwrap.dedent("""
        import threading
        from facelab.detect import create_detector
        errors = []
        def build():
            try:
                create_detector("haar")
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=build) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(errors)
    """)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_face_round_trip_and_scaling() -> None:
    f = Face((10, 20, 110, 140), np.arange(10, dtype=np.float32).reshape(5, 2), 0.9)
    assert Face.from_dict(f.to_dict()).box == f.box
    g = f.scaled(2.0)
    assert g.box == (20.0, 40.0, 220.0, 280.0) and np.allclose(g.landmarks, f.landmarks * 2)
    assert f.area == 100 * 120


def test_similarity_transform_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = np.deg2rad(17.0), 0.62, np.array([31.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-7)
    assert np.allclose(transform_points(m, src), dst, atol=1e-7)


def test_templates_and_margin() -> None:
    celeba = template_points("celeba", 218)
    # the official 178x218 frame sits in the middle of the 218 square: eyes near y=112
    assert np.all(np.abs(celeba[:2, 1] - 112) < 1.5)
    assert celeba[0, 0] < celeba[1, 0]
    wide = template_points("celeba", 218, margin=0.2)
    assert np.linalg.norm(wide[1] - wide[0]) < np.linalg.norm(celeba[1] - celeba[0])
    tight = template_points("tight", 112)
    assert np.allclose(tight[0], [38.2946, 51.6963], atol=1e-3)
    with pytest.raises(ConfigError, match="unknown template 'round'.*celeba.*tight"):
        template_points("round", 100)


def test_aligning_an_official_crop_reproduces_it(celeba_wild: Path) -> None:
    """The celeba template on an already-aligned photo gives back (nearly) the same picture."""
    official = read_image(celeba_wild / "img_align_celeba" / "003410.jpg")  # 178x218
    face = max(create_detector("yuface").detect(official), key=lambda f: f.area)
    crop, m = align_face(official, face.landmarks, 218, "celeba")
    assert crop.shape == (218, 218, 3)
    # an already aligned photo needs almost no rotation/scale, only the 20 px square offset
    assert abs(np.sqrt(np.linalg.det(m[:, :2])) - 1.0) < 0.08
    assert abs(m[0, 2] - 20.0) < 12 and abs(m[1, 2]) < 12
    diff = np.abs(crop[20:200, 40:180].astype(int) - official[20:200, 20:160].astype(int)).mean()
    assert diff < 25


def test_alignment_of_uncropped_photo_matches_official_crop(celeba_wild: Path) -> None:
    rgb = read_image(celeba_wild / "img_celeba" / "005840.jpg")
    face = max(create_detector("yuface").detect(rgb), key=lambda f: f.area)
    crop, _ = align_face(rgb, face.landmarks, 218, "celeba")
    ours = crop[:, 20:198].astype(float)
    official = read_image(celeba_wild / "img_align_celeba" / "005840.jpg").astype(float)
    corr = np.corrcoef(ours.mean(2).ravel(), official.mean(2).ravel())[0, 1]
    assert corr > 0.8, f"aligned crop differs from the official one (correlation {corr:.2f})"


def test_light_balancing_and_background_suppression(celeba_wild: Path) -> None:
    crop = read_image(celeba_wild / "img_align_celeba" / "003410.jpg")[:178, :178]
    lit = balance_light(crop)
    assert lit.shape == crop.shape and lit.dtype == np.uint8 and not np.array_equal(lit, crop)
    lm = template_points("celeba", 178)
    grey = suppress_background(crop, lm, "grey")
    assert np.all(np.abs(grey[:3, :3].astype(int) - 128) <= 1)                  # corner replaced
    cy, cx = lm[:, 1].mean().astype(int), lm[:, 0].mean().astype(int)
    assert np.array_equal(grey[cy - 5:cy + 5, cx - 5:cx + 5], crop[cy - 5:cy + 5, cx - 5:cx + 5])  # face kept
    blurred = suppress_background(crop, lm, "blur")
    assert not np.array_equal(blurred[:20, :20], crop[:20, :20])
    with pytest.raises(ConfigError, match="unknown background mode"):
        suppress_background(crop, lm, "pink")
