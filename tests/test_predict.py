"""facelab predict: real photos in, every face with its probabilities out; bad files listed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import facelab
from facelab.predict import predict
from facelab.bundle import read_bundle
from facelab.cli import app


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, celeba_wild: Path, orl_faces: Path) -> Path:
    """Real uncropped photos, a greyscale ORL PGM, a photo without a face, a non-image."""
    folder = tmp_path_factory.mktemp("photos")
    for p in sorted((celeba_wild / "img_celeba").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    shutil.copy(orl_faces / "s1" / "1.pgm", folder / "orl_s1_1.pgm")
    Image.new("RGB", (200, 160), (128, 128, 128)).save(folder / "empty_wall.png")
    (folder / "notes.jpg").write_text("not a photo at all")
    return folder


def test_cli_table_lists_faces_and_problem_files(celeba_run: Path, photo_folder: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(celeba_run), str(photo_folder)])
    assert result.exit_code == 0, result.output
    out = result.output
    _, bundle = read_bundle(celeba_run)
    assert any(label in out for label in bundle["task"]["labels"])
    assert "empty_wall.png" in out and "no_face" in out  # listed, not silently dropped
    assert "notes.jpg" in out and "unreadable" in out
    assert "6 photo(s)" in out


def test_cli_json_matches_the_python_api(celeba_run: Path, photo_folder: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(celeba_run), str(photo_folder / "*.jpg"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _, bundle = read_bundle(celeba_run)
    assert data["task"] == bundle["task"]
    photos = {Path(p["path"]).name: p for p in data["photos"]}
    assert photos["notes.jpg"]["status"] == "unreadable"
    real = [p for name, p in photos.items() if name != "notes.jpg"]
    assert real and all(p["status"] == "ok" and p["faces"] for p in real)

    predictor = facelab.load(celeba_run)
    for p in real:
        face = p["faces"][0]
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= p["width"] + 1 and 0 <= y0 < y1 <= p["height"] + 1
        lm = np.asarray(face["landmarks"])
        assert lm.shape == (5, 2) and (lm[:, 0] >= x0 - 5).all() and (lm[:, 0] <= x1 + 5).all()
        probs = np.asarray(list(face["prediction"]["probs"].values()))
        expected = predictor.predict_image(p["path"])[0].probs  # PyTorch, the bundle's own pipeline
        assert np.abs(probs - expected).max() < 1e-3  # JSON rounds to 5 decimals
        assert set(face["prediction"]["decision"]) <= set(bundle["task"]["labels"])


def test_csv_and_backends_agree(orl_run: Path, orl_faces: Path) -> None:
    photos = sorted((orl_faces / "s2").glob("*.pgm"))[:3]
    torch_report = predict(orl_run, photos, backend="torch", progress=False)
    onnx_report = predict(orl_run, photos, backend="auto", progress=False)
    assert torch_report.backend == "torch"
    for a, b in zip(torch_report.photos, onnx_report.photos):
        assert len(a.faces) == len(b.faces) >= 1
        assert np.abs(a.faces[0].probs - b.faces[0].probs).max() < 1e-4
        assert abs(float(a.faces[0].probs.sum()) - 1.0) < 1e-4

    header = torch_report.to_csv().splitlines()[0].split(",")
    assert header[:6] == ["path", "face", "status", "reason", "box", "decision"]
    assert header[6:] == list(torch_report.task.labels)


def test_missing_input_is_a_clear_error(celeba_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(celeba_run), str(tmp_path / "nope.jpg")])
    assert result.exit_code != 0
    assert "nope.jpg" in str(result.exception) or "nope.jpg" in result.output


def test_all_faces_keeps_every_face_of_a_group_photo(celeba_run: Path, celeba_wild: Path) -> None:
    photo = celeba_wild / "img_celeba" / "061970.jpg"  # two people in the photo
    default = predict(celeba_run, photo, progress=False).photos[0]
    every = predict(celeba_run, photo, all_faces=True, progress=False).photos[0]
    assert len(default.faces) == 1  # the run was prepared with multi_face="largest"
    assert len(every.faces) == 2
    from facelab.serve.app import _iou

    assert _iou(every.faces[0].face.box, every.faces[1].face.box) < 0.3, "two different faces"
