"""facelab explain: CAMs on real faces, mapping back onto the photo, feature maps, filters."""
from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facelab.cli import app
from facelab.explain import (CAM_METHODS, ExplainConfig, crop_transform, explain, explain_photo, feature_maps,
                             first_layer_filters)

X = importlib.import_module("facelab.explain")
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//""", re.I)


def _wild(celeba_wild: Path, n: int) -> list[Path]:
    return sorted((celeba_wild / "img_celeba").glob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def celeba_predictor(celeba_run: Path):
    from facelab.backends import load

    return load(celeba_run)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_on_real_photos_is_non_trivial_and_maps_back_through_the_alignment(celeba_predictor, celeba_wild,
                                                                              method):
    from facelab.align import transform_points

    for path in _wild(celeba_wild, 3):
        e = explain_photo(celeba_predictor, path, ExplainConfig(method=method))
        assert e is not None and e.face is not None
        if method == "gradcam" and e.predicted and e.cam.max() == 0:
            # Grad-CAM's averaged gradients can cancel (see explain_photo's warning): the
            # caption says so and HiResCAM shows the evidence (celeba_run since e5c0415: 1 of 3)
            assert X._caption(e, method).endswith("try hirescam")
            e = explain_photo(celeba_predictor, path, ExplainConfig(method="hirescam"))
        cam = e.cam
        assert cam.shape == e.crop.shape[:2] and cam.max() == pytest.approx(1.0)
        assert cam.std() > 0.05 and (cam > 0.1).mean() > 0.05  # a map, not a constant or a single pixel
        # the map on the photo is the crop's map carried back: the photo's peak, pushed through
        # the alignment transform, lands on the crop's hottest area; nothing outside the crop
        m = crop_transform(e.face, celeba_predictor.bundle["prepare"])
        y, x = np.unravel_index(e.cam_original.argmax(), e.cam_original.shape)
        cx, cy = transform_points(m, np.array([[x, y]], float))[0]
        assert cam[int(round(cy)), int(round(cx))] > 0.9
        footprint = X.to_original(np.ones_like(cam), e.face, celeba_predictor.bundle["prepare"], e.original.shape)
        assert e.cam_original[footprint == 0].max(initial=0) == 0
        # the face box lies inside the crop's footprint on the photo
        x0, y0, x1, y1 = (int(v) for v in e.face.box)
        assert footprint[(y0 + y1) // 2, (x0 + x1) // 2] > 0.99


def test_cam_peak_for_a_chosen_attribute_and_bad_targets(celeba_predictor, celeba_wild):
    path = _wild(celeba_wild, 1)[0]
    e = explain_photo(celeba_predictor, path, ExplainConfig(target="Eyeglasses"))
    assert e.label == "Eyeglasses"
    with pytest.raises(ValueError, match="valid: gradcam"):
        ExplainConfig(method="lime")
    with pytest.raises(ValueError, match="the model's labels are"):
        explain_photo(celeba_predictor, path, ExplainConfig(target="Wings"))


def test_batch_grid_feature_maps_filters_and_offline_html(celeba_run: Path, celeba_wild: Path, tmp_path: Path):
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_bytes(b"this is not a jpeg")
    photos = [*_wild(celeba_wild, 3), bad]
    result = explain(celeba_run, photos, out=tmp_path / "ex")
    assert len(result.items) == 3  # the broken file is skipped, the batch goes on
    for key in ("grid", "feature_maps", "filters", "cam_0"):
        data = result.files[key].read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 2000
    html = result.files["html"].read_text()
    assert "data:image/png;base64," in html and not EXTERNAL.search(html)


def test_feature_maps_after_conv_activation_and_pool(celeba_predictor, orl_run: Path, celeba_wild: Path):
    from facelab.backends import load

    crop = explain_photo(celeba_predictor, _wild(celeba_wild, 1)[0], ExplainConfig(feature_maps=False)).crop
    maps = feature_maps(celeba_predictor, crop, blocks=2)
    kinds = [caption.split()[2] for caption, _ in maps]
    assert kinds[:3] == ["conv", "activation", "pool"] and kinds.count("conv") == 2
    assert all(m.ndim == 3 and m.std() > 0 for _, m in maps)
    filters = first_layer_filters(load(orl_run))
    assert filters.ndim == 4 and filters.shape[-1] == 3 and filters.dtype == np.uint8 and filters.std() > 0


def test_timm_model_is_explained_too(celeba_predictor, celeba_wild: Path):
    """A timm network (EfficientNet-Lite0, random init, no download) behind the same predictor."""
    import copy

    from facelab.models import create_model

    predictor = copy.copy(celeba_predictor)
    predictor.model = create_model("efficientnet_lite0", predictor.task.num_outputs, pretrained=False).eval()
    e = explain_photo(predictor, _wild(celeba_wild, 1)[0], ExplainConfig(method="hirescam"))
    assert e.cam.std() > 0.01 and e.cam.max() == pytest.approx(1.0)
    kinds = [c.split()[2] for c, _ in feature_maps(predictor, e.crop, blocks=2)]
    assert "conv" in kinds and "activation" in kinds


def test_cli_explain_and_clear_errors(binary_run: Path, tmp_path: Path, celeba_wild: Path, celeba_mini: Path):
    aligned = sorted((celeba_mini / "img_align_celeba").glob("*.jpg"))[:2]
    r = CliRunner().invoke(app, ["explain", str(binary_run), *map(str, aligned), "--aligned", "--no-feature-maps",
                                 "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "explained 2 of 2" in r.output and (tmp_path / "cli" / "explain.html").is_file()
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        explain(tmp_path / "missing", aligned)
    with pytest.raises(ValueError, match="no photos"):
        explain(binary_run, [])
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 200), "white").save(blank)
    with pytest.raises(ValueError, match="no face found"):
        explain(binary_run, [blank], out=tmp_path / "none")


# --------------------------------------------------------------------------- does the map point at the face?

def _celeba_test_split(celeba_mini: Path) -> list[Path]:
    lines = (celeba_mini / "list_eval_partition.txt").read_text().split()
    return [celeba_mini / "img_align_celeba" / f for f, part in zip(lines[::2], lines[1::2]) if part == "2"]


@pytest.fixture(scope="module")
def smiling_vgg(celeba_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smallvgg (global average pooling, like timm networks), 32 px, trained on celeba-mini's
    Smiling for 8 epochs (~15 s on 2 cores): small enough for the test session, trained enough
    (about 70 % validation accuracy) that its maps mean something."""
    from facelab.train import train

    return train(celeba_mini, out=str(tmp_path_factory.mktemp("runs")), name="smiling-vgg", model="smallvgg",
                 image_size=32, epochs=8, lr=5e-3, batch_size=32, seed=0, attrs=["Smiling"], progress=False,
                 tensorboard=False)


@pytest.fixture(scope="module")
def face_photos(smiling_vgg: Path, celeba_wild: Path, celeba_mini: Path) -> list:
    """The 40 uncropped celeba-wild-mini photos and the 120 celeba-mini test photos, each with
    its detected face and aligned crop."""
    from facelab.backends import load

    return X.face_photos(load(smiling_vgg).bundle["prepare"], [*_wild(celeba_wild, 40), *_celeba_test_split(celeba_mini)])


def test_a_map_point_on_the_crop_lands_on_the_same_landmark_in_the_photo(face_photos):
    """The crop -> photo mapping alone: a small blob put where each detected landmark lies in
    the crop is carried back by to_original onto that landmark in the photo, to within one
    crop pixel (or 1.5 photo pixels where the crop magnifies the face)."""
    from facelab.align import transform_points
    from facelab.prepare import PrepareConfig

    prepare = PrepareConfig().to_dict()
    size = prepare["size"]
    yy, xx = np.mgrid[0:size, 0:size]
    wild = [p for p in face_photos if "img_celeba" in p.path]
    assert len(wild) == 40
    for p in wild:
        m = crop_transform(p.face, prepare)
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # crop pixels per photo pixel
        for (cx, cy), landmark in zip(transform_points(m, p.face.landmarks), p.face.landmarks):
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0).astype(np.float32)
            back = X.to_original(blob, p.face, prepare, p.rgb.shape)
            y, x = np.unravel_index(back.argmax(), back.shape)
            assert np.hypot(x - landmark[0], y - landmark[1]) <= max(1.5, 1.0 / scale), p.path


def _chance_tail(hits: int, n: int, p: float) -> float:
    """P(at least ``hits`` of ``n`` peaks in the box) if each lands there with probability ``p``."""
    return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(hits, n + 1))


def test_gradcam_maps_are_non_trivial_and_peak_inside_the_face_box(smiling_vgg: Path, face_photos):
    """Grad-CAM for Smiling on 160 real faces (40 uncropped photos, the map carried back onto
    the photo): finite maps with structure, and a peak inside the detected face box on far more
    photos than chance and than the same network with random weights (mean of 3 seeds: its
    maps cannot know where a face is).

    Margins: chance is ~0.24 (face-box area / crop footprint); "far more" = a rate that chance
    placement reaches with probability < 0.001 (binomial: ~0.35 here) and 0.3 above the
    random-weight control (~0.02). Seed 0 gives 0.86. Over training seeds 0-7 this small model
    gave 0.86, 0.76, 0.57, 0.63, 0.49, 0.82, 0.47, 0.82: where a weak model looks varies, so
    the bar is significance, not seed 0's value."""
    from facelab.backends import load

    predictor = load(smiling_vgg)
    assert len(face_photos) >= 150
    crops = [p.crop for p in face_photos]
    cams = X.class_activation_maps(predictor, crops, [1] * len(crops))
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    smiling = predictor.predict_crops(crops)[:, 1] >= predictor.task.thresholds[0]  # column 1 = Smiling
    assert smiling.sum() >= 20
    # Grad-CAM averages each channel's gradient over the map before weighting, so evidence can
    # cancel to an empty map on a face the model does call smiling (1 of 106 on the CI machine).
    # That must stay rare, HiResCAM must then show the evidence, and the caption must say so.
    empty = cams[smiling].max(axis=(1, 2)) == 0
    assert empty.mean() <= 0.05, f"{empty.sum()} of {smiling.sum()} smiling faces have an empty Grad-CAM map"
    # the others have evidence for smiling, with a shape: peak 1, spread, neither a dot nor the
    # whole crop. (Until 2026-12 this test read column 0, not_Smiling, and so checked the faces
    # the model calls NOT smiling; on the real smiling faces 83 of 84 maps have such a shape,
    # one covers 87% of the crop, so the bar is the same 5% as for empty maps.)
    shaped = [cam.max() == pytest.approx(1.0) and cam.std() > 0.05 and 0.002 < (cam > 0.5).mean() < 0.8
              for cam in cams[smiling][~empty]]
    assert np.mean(shaped) >= 0.95, f"{len(shaped) - sum(shaped)} of {len(shaped)} maps without a shape"
    if empty.any():
        hires = X.class_activation_maps(predictor, [c for c, e in zip(np.array(crops)[smiling], empty) if e],
                                        [1] * int(empty.sum()), method="hirescam")
        assert np.allclose(hires.max(axis=(1, 2)), 1.0)
    e = X.Explanation("x.jpg", "Smiling", 0.84, crops[0], np.zeros_like(cams[0]), predicted=True)
    assert X._caption(e, "gradcam") == "gradcam map empty at p=0.84: try hirescam"
    e.predicted = False
    assert X._caption(e, "gradcam") == "no evidence for Smiling"

    trained = X.pointing_game(predictor, face_photos, "Smiling")
    controls = [X.pointing_game(X.randomized(predictor, seed), face_photos, "Smiling") for seed in range(3)]
    untrained = float(np.mean([c.in_box for c in controls]))
    assert all(c.chance == pytest.approx(trained.chance) for c in controls) and 0.15 < trained.chance < 0.35
    hits = round(trained.in_box * trained.photos)
    assert _chance_tail(hits, trained.photos, trained.chance) < 1e-3, (trained, controls)
    assert trained.in_box >= untrained + 0.3, (trained, controls)
