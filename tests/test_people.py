"""face-embed identity model, open-set unknown, verify, enroll: on real ORL and CelebA faces."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facelab import people
from facelab.data import load_source
from facelab.errors import ConfigError, DataError, NotFound, RunExists

KNOWN = [f"s{i}" for i in range(1, 7)]        # 6 known people, photos 1-8 (9, 10 unseen)
STRANGERS = [f"s{i}" for i in range(31, 37)]  # never in training
NEWCOMER = "s40"                              # enrolled later


def _person_photo(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


def _link_people(src: Path, dst: Path, names: list[str], photos: range = range(1, 11)) -> Path:
    for name in names:
        (dst / name).mkdir(parents=True, exist_ok=True)
        for k in photos:
            (dst / name / f"{k}.pgm").symlink_to(src / name / f"{k}.pgm")
    return dst


@pytest.fixture(scope="session")
def orl_run(orl_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _link_people(orl_faces, tmp_path_factory.mktemp("orl-people"), KNOWN, range(1, 9))
    cfg = people.FaceEmbedConfig(valid_fraction=0.25, seed=0)
    return people.train_face_embed(load_source(folder), cfg, tmp_path_factory.mktemp("runs") / "orl", progress=False)


def test_run_folder_and_bundle(orl_run: Path) -> None:
    bundle = json.loads((orl_run / "bundle" / "bundle.json").read_text())
    assert bundle["model"]["backend"] == "face-embed"
    assert bundle["task"] == {"kind": "multiclass", "labels": sorted(KNOWN), "thresholds": []}
    assert bundle["prepare"]["detector"]  # the face preparation travels with the model
    open_set = bundle["open_set"]
    assert open_set["unknown_label"] == "unknown" and open_set["calibrated"]
    assert 0.2 < open_set["threshold"] < 0.8
    assert open_set["far"] <= 0.05 and open_set["frr"] <= 0.1
    for name in ("config.json", "metrics.csv", "open_set.png"):
        assert (orl_run / name).is_file()
    assert (orl_run / "bundle" / bundle["model"]["files"]["head"]).is_file()
    metrics = (orl_run / "metrics.csv").read_text().splitlines()
    row = dict(zip(metrics[0].split(","), metrics[1].split(",")))
    assert float(row["accuracy"]) >= 0.9  # 6 people, 2 held-out photos each
    # the open-set decision on the held-out photos is measured too (quality: bench/people.py)
    unknown, open_acc = float(row["valid_unknown_rate"]), float(row["open_set_accuracy"])
    assert 0 <= unknown <= 1 and open_acc <= float(row["accuracy"]) and open_acc + unknown <= 1 + 1e-9


def test_gallery_keeps_every_photo_and_calibrates_leave_one_out(orl_run: Path, orl_faces: Path) -> None:
    """Held-out photos only measure accuracy: all 8 photos of each person are enrolled,
    and the threshold comes from leave-one-out over them (genuine: 48 photos)."""
    bundle = json.loads((orl_run / "bundle" / "bundle.json").read_text())
    # s2/7.pgm is the one photo the detector misses
    assert bundle["people"]["photos"] == {name: 7 if name == "s2" else 8 for name in KNOWN}
    gallery = people.Gallery.load(orl_run / "bundle" / bundle["model"]["files"]["gallery"])
    enrolled = {f"{n}/{k}.pgm" for n in KNOWN for k in range(1, 9)} - {"s2/7.pgm"}
    assert sorted(_person_photo(n) for n in gallery.names) == sorted(enrolled)  # the source photos
    open_set = bundle["open_set"]
    assert open_set["genuine"] == 47 and open_set["impostor"] == 47 and "leave-one-out" in open_set["calibration"]
    fars = [row["far"] for row in open_set["tradeoff"]]
    frrs = [row["frr"] for row in open_set["tradeoff"]]
    assert [row["target_far"] for row in open_set["tradeoff"]] == list(people.TRADEOFF_FARS)
    assert all(f <= t for f, t in zip(fars, people.TRADEOFF_FARS)) and frrs == sorted(frrs, reverse=True)


def test_target_far_sets_the_trade_off(orl_faces: Path, tmp_path: Path) -> None:
    folder = _link_people(orl_faces, tmp_path / "p", KNOWN, range(1, 6))
    strict = people.train_face_embed(load_source(folder), people.FaceEmbedConfig(target_far=0.0),
                                     tmp_path / "strict", progress=False)
    open_set = json.loads((strict / "bundle" / "bundle.json").read_text())["open_set"]
    assert open_set["target_far"] == 0.0 and open_set["far"] == 0.0
    assert open_set["threshold"] == pytest.approx(open_set["tradeoff"][0]["threshold"])


def test_same_photo_same_embedding_in_training_predict_and_verify(orl_run: Path, orl_faces: Path) -> None:
    """Training embeds crops read back from the cache, predict/verify cut them in memory:
    identity runs store lossless crops, so both give the same vector."""
    from facelab.embed import embed_images
    from facelab.predict import _crop_cache, _photo_faces, face_pipeline

    bundle = json.loads((orl_run / "bundle" / "bundle.json").read_text())
    assert bundle["prepare"]["format"] == "png" and bundle["prepare"]["multi_face"] == "main"
    gallery = people.Gallery.load(orl_run / "bundle" / bundle["model"]["files"]["gallery"])
    predictor = people.load(orl_run)
    for name in ("s2/3.pgm", "s5/8.pgm"):
        photo = orl_faces / name
        trained = gallery.embeddings[[_person_photo(n) for n in gallery.names].index(name)]
        [pred] = predictor.predict_image(photo)
        np.testing.assert_allclose(predictor.embed_crops([pred.crop])[0], trained, atol=1e-5)
        emb, found = embed_images([photo], bundle["prepare"])
        assert found.all()
        np.testing.assert_allclose(emb[0], trained, atol=1e-5)
        # facelab.predict reads the crop training cached (no detection) and gets the same vector
        pipeline = face_pipeline(bundle)
        faces, size = _photo_faces(pipeline, _crop_cache(pipeline.config), photo)
        assert size == (92, 112)
        np.testing.assert_allclose(predictor.embed_crops([faces[0].crop])[0], trained, atol=1e-5)


def test_predict_skips_detection_for_photos_training_prepared(orl_run: Path, orl_faces: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from facelab.predict import predict
    from facelab.prepare import FacePipeline

    def no_detection(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise AssertionError("detection ran on a photo whose crop is cached")

    photos = [orl_faces / "s1" / "2.pgm", orl_faces / "s4" / "5.pgm"]  # both in training
    monkeypatch.setattr(FacePipeline, "process_file", no_detection)
    monkeypatch.setattr(FacePipeline, "process", no_detection)
    report = predict(orl_run, photos, progress=False)
    assert [p.faces[0].identity for p in report.photos] == ["s1", "s4"]
    assert [(p.width, p.height) for p in report.photos] == [(92, 112)] * 2


def test_main_face_is_the_photographed_person(celeba_wild: Path) -> None:
    """Among several faces the ``main`` policy picks the subject: a centred face over a
    somewhat larger bystander at the edge, and on a real multi-person CelebA photo the face
    of the labelled person (the one in CelebA's own aligned crop)."""
    from facelab.detect import Face
    from facelab.embed import distance, embed_images
    from facelab.prepare import main_face

    centred = Face((80.0, 80.0, 160.0, 170.0), np.zeros((5, 2), np.float32), 0.9)
    bystander = Face((0.0, 0.0, 100.0, 110.0), np.zeros((5, 2), np.float32), 0.9)
    assert main_face([bystander, centred], 240, 250) is centred
    small = Face((110.0, 110.0, 130.0, 132.0), np.zeros((5, 2), np.float32), 0.9)
    assert main_face([centred, small], 240, 250) is centred

    photo, official = celeba_wild / "img_celeba" / "061970.jpg", celeba_wild / "img_align_celeba" / "061970.jpg"
    emb, found = embed_images([photo, official])
    assert found.all() and distance(emb[:1], emb[1:])[0, 0] < 0.4


def test_known_people_recognised_and_strangers_unknown(orl_run: Path, orl_faces: Path) -> None:
    predictor = people.load(orl_run)
    assert predictor.labels == sorted(KNOWN)
    strangers = [orl_faces / s / f"{k}.pgm" for s in STRANGERS for k in (1, 5)]
    names = [p.name for path in strangers for p in predictor.predict_image(path)]
    assert len(names) == len(strangers)
    assert names.count("unknown") >= len(strangers) - 1  # FAR at most 1 of 12

    known = [(s, orl_faces / s / "10.pgm") for s in ("s1", "s4", "s6")]
    for person, path in known:
        [pred] = predictor.predict_image(path)
        assert pred.name == person, (path, pred.name, pred.distance)
        assert pred.probs.shape == (len(KNOWN),) and abs(float(pred.probs.sum()) - 1) < 1e-4
        assert pred.distance <= predictor.threshold


def test_predict_crops_matches_contract(orl_run: Path, orl_faces: Path) -> None:
    from facelab.images import read_image
    from facelab.prepare import FacePipeline

    predictor = people.load(orl_run)
    pipe = FacePipeline(predictor.bundle["prepare"])
    crops = [pipe.process(read_image(orl_faces / s / "3.pgm"))[0].crop for s in ("s3", "s33")]
    probs = predictor.predict_crops(crops)
    assert probs.dtype == np.float32 and probs.shape == (2, len(KNOWN))
    assert predictor.labels[int(probs[0].argmax())] == "s3"
    assert predictor.identify_crops(crops) == ["s3", "unknown"]


def test_enroll_new_person_without_retraining(orl_run: Path, orl_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(orl_run, run)
    before = json.loads((run / "bundle" / "bundle.json").read_text())
    (run / "bundle" / "model.onnx").write_bytes(b"stale")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    photos = [orl_faces / NEWCOMER / f"{k}.pgm" for k in range(1, 6)]
    report = people.enroll(run, NEWCOMER, photos + [bad])
    assert report.new_person and report.added == 5 and report.skipped == [str(bad)]
    assert report.people == len(KNOWN) + 1

    after = json.loads((run / "bundle" / "bundle.json").read_text())
    assert after["task"]["labels"] == sorted(KNOWN) + [NEWCOMER]
    # the threshold is recalibrated leave-one-out on the grown gallery, with its trade-off
    gallery = people.Gallery.load(run / "bundle" / after["model"]["files"]["gallery"])
    expected = people.calibrate_threshold(*people.open_set_scores(gallery))
    assert after["open_set"]["threshold"] == pytest.approx(expected.threshold)
    assert after["open_set"]["genuine"] == len(gallery.labels) and len(after["open_set"]["tradeoff"]) == 6
    assert after["people"]["photos"][NEWCOMER] == 5
    assert after["people"]["photos"]["s1"] == before["people"]["photos"]["s1"]
    files = sorted(p.name for p in (run / "bundle").iterdir())
    assert set(after["model"]["files"].values()) <= set(files)
    assert not set(before["model"]["files"].values()) & set(files)  # old head/gallery removed
    assert "model.onnx" not in files                                # stale export removed

    predictor = people.load(run)
    names = [predictor.predict_image(orl_faces / NEWCOMER / f"{k}.pgm")[0].name for k in range(6, 9)]
    assert names.count(NEWCOMER) >= 2
    assert predictor.predict_image(orl_faces / "s2" / "10.pgm")[0].name == "s2"  # old people kept


def test_enroll_refuses_photos_without_faces(orl_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(orl_run, run)
    blank = tmp_path / "blank.png"
    from facelab.images import write_image

    write_image(blank, np.full((120, 100, 3), 128, np.uint8))
    with pytest.raises(DataError, match="no face found"):
        people.enroll(run, "nobody", [blank])
    with pytest.raises(ConfigError, match="unknown"):
        people.enroll(run, "unknown", [blank])
    with pytest.raises(NotFound, match="bundle.json"):
        people.enroll(tmp_path / "missing", "x", [blank])


def test_user_errors_are_facelab_errors(orl_run: Path, orl_faces: Path) -> None:
    """An existing run, a bad option: the train stage's kinds (still the built-ins callers caught)."""
    with pytest.raises(RunExists, match="--overwrite"):
        people.train_face_embed(load_source(orl_faces), people.FaceEmbedConfig(), orl_run, progress=False)
    with pytest.raises(ConfigError, match="valid: logreg, knn"):
        people.FaceEmbedConfig(head="svm")
    assert issubclass(RunExists, FileExistsError) and issubclass(ConfigError, ValueError)


def test_verify_same_and_different(orl_faces: Path, orl_run: Path) -> None:
    same = people.verify(orl_faces / "s5" / "1.pgm", orl_faces / "s5" / "7.pgm")
    assert same.same and same.distance < same.threshold == 0.6 and same.threshold_source == "dlib default"
    # 6 same-person and 6 different-person pairs of people the run never saw.
    pairs = [(a, a) for a in STRANGERS] + [(a, b) for a, b in zip(STRANGERS, STRANGERS[1:] + STRANGERS[:1])]
    results = [people.verify(orl_faces / a / "1.pgm", orl_faces / b / "5.pgm", run=orl_run) for a, b in pairs]
    assert all(r.threshold_source.startswith("calibrated") for r in results)
    correct = [r.same == (a == b) for r, (a, b) in zip(results, pairs)]
    assert sum(correct) >= 11, [(p, r.distance) for p, r in zip(pairs, results)]


def test_verify_bad_input(orl_faces: Path, tmp_path: Path) -> None:
    from facelab.images import ImageError

    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        people.verify(orl_faces / "s1" / "1.pgm", bad)


def test_cli_verify_and_enroll(orl_faces: Path, orl_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from facelab.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(orl_faces / "s31" / "1.pgm"), str(orl_faces / "s31" / "5.pgm"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["same"] is True
    res = runner.invoke(app, ["verify", str(orl_faces / "s31" / "1.pgm"), str(orl_faces / "s32" / "5.pgm")])
    assert res.exit_code == 1 and "DIFFERENT people" in res.output

    run = tmp_path / "run"
    shutil.copytree(orl_run, run)
    before = json.loads((run / "bundle" / "bundle.json").read_text())["people"]["photos"]["s1"]
    res = runner.invoke(app, ["enroll", str(run), "s1", str(orl_faces / "s1" / "10.pgm")])
    assert res.exit_code == 0, res.output
    assert "known person" in res.output
    assert json.loads((run / "bundle" / "bundle.json").read_text())["people"]["photos"]["s1"] == before + 1


def test_export_head_onnx(orl_run: Path, tmp_path: Path, orl_faces: Path) -> None:
    import onnxruntime as ort

    from facelab.embed import embed_images

    out = people.export_onnx(orl_run, tmp_path / "head.onnx")
    predictor = people.load(orl_run)
    emb, found = embed_images([orl_faces / "s6" / "9.pgm"], predictor.bundle["prepare"])
    assert found.all()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"embedding": emb})[0]
    np.testing.assert_allclose(probs, predictor.model.probs(emb), atol=1e-5)


def test_celeba_identities_30_way_few_shot(celeba_mini: Path, tmp_path: Path) -> None:
    """All 30 celeba-mini people, 4 training photos each, 2 held out: 30-way accuracy."""
    table = load_source(celeba_mini)
    rows: list[int] = []
    for person in sorted(set(table.identities)):
        rows += [i for i, p in enumerate(table.identities) if p == person][:6]
    cfg = people.FaceEmbedConfig(valid_fraction=2 / 6, seed=1)
    run = people.train_face_embed(table.subset(rows), cfg, tmp_path / "celeba", progress=False)
    bundle = json.loads((run / "bundle" / "bundle.json").read_text())
    assert len(bundle["task"]["labels"]) == 30
    metrics = bundle["train"]["metrics"]
    assert metrics["accuracy"] >= 0.93, metrics  # 60 held-out photos
    # Each person left out in turn plays the stranger: most are rejected at the threshold.
    assert bundle["open_set"]["far"] <= 0.15 and bundle["open_set"]["impostor"] == 180


def test_calibrate_threshold_rules() -> None:
    genuine = np.array([0.30, 0.35, 0.40, 0.45])
    impostor = np.array([0.55, 0.60, 0.70, 0.80])
    cal = people.calibrate_threshold(genuine, impostor)
    assert 0.45 < cal.threshold < 0.55 and cal.far == 0 and cal.frr == 0
    overlap = people.calibrate_threshold(np.array([0.3, 0.5, 0.62]), np.array([0.45, 0.7, 0.8, 0.9]), target_far=0.0)
    assert overlap.threshold < 0.45 and overlap.far == 0 and overlap.frr == pytest.approx(2 / 3)
    fallback = people.calibrate_threshold(genuine, np.zeros(0))
    assert not fallback.calibrated and fallback.threshold == 0.6


def test_embedding_cache(orl_faces: Path, tmp_path: Path) -> None:
    from facelab.embed import EmbeddingCache, embed_crops
    from facelab.images import read_image

    crops = [read_image(orl_faces / "s11" / f"{k}.pgm") for k in (1, 2)]
    cache = EmbeddingCache(tmp_path / "emb")
    first = embed_crops(crops, cache=cache)
    assert first.shape == (2, 128) and first.dtype == np.float32
    assert len(list((tmp_path / "emb").rglob("*.npy"))) == 2
    again = embed_crops(crops, cache=cache)
    np.testing.assert_array_equal(first, again)
    assert np.linalg.norm(first[0] - first[1]) < 0.6  # same person, raw (unaligned) ORL photos
    with pytest.raises(ValueError, match="uint8"):
        embed_crops([crops[0].astype(np.float32)], cache=False)


def test_predict_and_serve_say_unknown_for_strangers(orl_run: Path, orl_faces: Path) -> None:
    """The open-set decision reaches `facelab predict` and the service's batched model call."""
    from facelab.backends import load
    from facelab.images import read_image
    from facelab.predict import face_pipeline, predict
    from facelab.serve.app import _batch_fn

    strangers = [orl_faces / s / "1.pgm" for s in STRANGERS]
    known = [orl_faces / s / "10.pgm" for s in ("s1", "s4")]
    report = predict(orl_run, strangers + known, progress=False)
    decisions = [p.faces[0].to_dict(report.task)["prediction"]["decision"] for p in report.photos]
    assert decisions[-2:] == ["s1", "s4"]
    assert decisions[:-2].count("unknown") >= len(strangers) - 1

    predictor = load(orl_run)
    pipeline = face_pipeline(predictor.bundle, False)
    crops = [f.crop for path in strangers[:2] + known[:1] for f in pipeline.process(read_image(path))]
    rows = _batch_fn(predictor)(crops)
    assert [r[0].shape for r in rows] == [(len(KNOWN),)] * 3
    assert rows[2][1] == "s1" and "unknown" in (rows[0][1], rows[1][1])


def test_open_set_scores_match_a_direct_computation(orl_run: Path) -> None:
    """Leave-one-out scores of both rules against a plain loop over the real gallery."""
    bundle = json.loads((orl_run / "bundle" / "bundle.json").read_text())
    assert bundle["open_set"]["rule"] == "centroid" and people.open_set_rule({}) == "nearest"  # old runs
    g = people.Gallery.load(orl_run / "bundle" / bundle["model"]["files"]["gallery"])
    x, y = g.embeddings.astype(np.float64), g.labels
    genuine, impostor = [], []
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        centres = {c: x[rest & (y == c)].mean(0) for c in np.unique(y[rest])}
        impostor.append(min(np.linalg.norm(x[i] - m) for c, m in centres.items() if c != y[i]))
        if (y == y[i]).sum() >= 2:
            genuine.append(min(np.linalg.norm(x[i] - m) for m in centres.values()))
    got_genuine, got_impostor = people.open_set_scores(g, "centroid")
    np.testing.assert_allclose(np.sort(got_genuine), np.sort(genuine), atol=1e-5)
    np.testing.assert_allclose(np.sort(got_impostor), np.sort(impostor), atol=1e-5)
    near_genuine, near_impostor = people.open_set_scores(g, "nearest")
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(np.sort(near_genuine), np.sort(d.min(1)), atol=1e-5)
    np.testing.assert_allclose(np.sort(near_impostor), np.sort(np.where(y[:, None] != y[None], d, np.inf).min(1)),
                               atol=1e-5)


def test_load_names_the_options_a_backend_takes(orl_run: Path) -> None:
    import facelab

    with pytest.raises(ValueError, match=r"face-embed backend\): option\(s\) device not understood; valid: none"):
        facelab.load(orl_run, device="cpu")
    assert facelab.load(orl_run).labels == sorted(KNOWN)
