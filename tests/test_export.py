"""ONNX export: parity with PyTorch on real face crops, metadata, stand-alone bundles."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import facelab
from facelab.export import export
from facelab.bundle import Bundle, read_bundle
from facelab.images import read_image


def _real_crops(bundle: dict, photos: list[Path]) -> list[np.ndarray]:
    from facelab.prepare import FacePipeline

    pipe = FacePipeline(bundle["prepare"])
    crops = [f.crop for p in photos for f in pipe.process(read_image(p))]
    assert crops, "the detector found no face in the real test photos"
    return crops


def _copy_bundle(run: Path, dest: Path) -> Path:
    bdir, _ = read_bundle(run)
    shutil.copytree(bdir, dest / "bundle", ignore=shutil.ignore_patterns("model.onnx*", "model.export.json"))
    return dest


def test_standalone_export_matches_pytorch_on_real_faces(celeba_run: Path, celeba_wild: Path, tmp_path: Path) -> None:
    from facelab.export import OnnxPredictor, read_metadata

    report = export(celeba_run, out=tmp_path / "onnx")
    assert report.max_abs_diff < 1e-4
    assert Path(report.path).is_file() and Path(report.bundle).is_file()

    _, source = read_bundle(celeba_run)
    meta = read_metadata(report.path)
    for key in ("task", "input", "prepare"):  # everything needed travels inside the file
        assert meta[key] == source[key]
    assert meta["model"]["backend"] == "onnx" and meta["model"]["source"] == source["model"]

    onnx = facelab.load(tmp_path / "onnx")  # the bundle registry picks the ONNX backend
    assert isinstance(onnx, OnnxPredictor) and onnx.labels == list(source["task"]["labels"])
    torch_pred = facelab.load(celeba_run)
    photos = sorted((celeba_wild / "img_celeba").glob("*.jpg"))[:4]
    crops = _real_crops(source, photos)
    a, b = onnx.predict_crops(crops), torch_pred.predict_crops(crops)
    assert a.shape == (len(crops), len(onnx.labels)) and a.dtype == np.float32
    assert np.abs(a - b).max() < 1e-4

    faces_onnx, faces_torch = onnx.predict_image(photos[0]), torch_pred.predict_image(photos[0])
    assert len(faces_onnx) == len(faces_torch) >= 1
    assert np.allclose(faces_onnx[0].face.box, faces_torch[0].face.box)
    assert np.abs(faces_onnx[0].probs - faces_torch[0].probs).max() < 1e-4


def test_cli_export_into_run_is_used_by_predict(binary_run: Path, celeba_mini: Path, tmp_path: Path) -> None:
    from facelab.cli import app
    from facelab.export import cached_export, export_digest, weights_digest
    from facelab.predict import backend_of, load_predictor

    run = _copy_bundle(binary_run, tmp_path / "run")
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and "OK" in result.output
    bdir, bundle = read_bundle(run)
    assert (bdir / "model.onnx").is_file()
    assert cached_export(Bundle.read(run)) == bdir / "model.onnx"  # fresh: predict/serve use it

    predictor = load_predictor(run)
    assert backend_of(predictor) == "onnx"
    photo = sorted((celeba_mini / "img_align_celeba").glob("*.jpg"))[0]
    probs = predictor.predict_image(photo)[0].probs
    assert probs.shape == (2,) and abs(float(probs.sum()) - 1.0) < 1e-5  # binary: [1 - p, p]

    # new thresholds = a different bundle: the export is stale and is not used
    bundle["task"]["thresholds"] = [0.3]
    assert export_digest(bdir / "model.onnx") == weights_digest(bdir, read_bundle(run)[1])
    assert export_digest(bdir / "model.onnx") != weights_digest(bdir, bundle)


def test_onnx_is_exported_only_when_asked(binary_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backend "auto" uses an up-to-date export when there is one and PyTorch otherwise; it
    never exports as a side effect. Asking for "onnx" exports into the cache."""
    from facelab import load
    from facelab.predict import backend_of, load_predictor

    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    run = _copy_bundle(binary_run, tmp_path / "run")
    assert backend_of(load_predictor(run)) == "torch"
    assert backend_of(load(run, backend="auto", threads=1)) == "torch"  # ONNX-only options drop with the fallback
    assert not list(tmp_path.rglob("*.onnx"))
    onnx = load(run, backend="onnx", threads=1)
    assert backend_of(onnx) == "onnx" and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    assert backend_of(load_predictor(run)) == "onnx"  # the export now exists: auto uses it
    with pytest.raises(ValueError, match="threads"):
        load(run, backend="torch", threads=1)
    assert backend_of(load_predictor(run, "torch", threads=1)) == "torch"  # predict/serve size ONNX's pool only
    with pytest.raises(ValueError, match="valid: torch, onnx, auto"):
        load(run, backend="tensorrt")


def test_export_errors_are_clear(tmp_path: Path, celeba_run: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bundle.json"):
        export(tmp_path)
    with pytest.raises(ValueError, match="onnx"):
        export(celeba_run, out=tmp_path / "x", format="tflite")
