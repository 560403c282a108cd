"""facelab evaluate / compare on small runs trained in the test session (real photos)."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facelab import metrics as M
from facelab.cli import app
from facelab.compare import compare
from facelab.data import DataError, load_source
from facelab.evaluate import EvaluateConfig, ensemble_spread, evaluate, task_targets
from facelab.tasks import Task

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//|@import""", re.I)


def _copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("tb", "checkpoints", "explain", "plots"))
    return dst


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path


def _assert_offline_html(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "<img" in text and "data:image/png;base64," in text
    assert not EXTERNAL.search(text), EXTERNAL.search(text)


@pytest.fixture(scope="module")
def celeba_eval(celeba_run: Path, celeba_mini: Path, tmp_path_factory: pytest.TempPathFactory):
    run = _copy_run(celeba_run, tmp_path_factory.mktemp("celeba_eval"))
    return run, evaluate(run, celeba_mini, top_k=8, progress=False, tune_split="valid")


def test_multilabel_report_numbers_plots_and_card(celeba_eval, celeba_mini: Path):
    run, result = celeba_eval
    m = json.loads((run / "metrics.json").read_text())  # strict JSON: NaN written as null
    labels = m["task"]["labels"]
    assert m["source"]["split"] == "test" and m["n"] == result.metrics["n"] > 0
    # per attribute: metrics beside the best constant answer on the evaluated photos, and the
    # training split's majority answer beside it
    table = load_source(celeba_mini)
    train = table.split("train")
    for name in labels:
        a = m["per_attribute"][name]
        col = train.labels[:, train.label_names.index(name)]
        majority = int(col.mean() >= 0.5)
        test = table.split("test").labels[:, table.label_names.index(name)]
        assert a["baseline_accuracy"] == pytest.approx(max(test.mean(), 1 - test.mean()))
        assert a["train_majority_accuracy"] == pytest.approx(float((test == majority).mean()))
        assert 0 <= a["accuracy"] <= 1 and set(a) >= {"balanced_accuracy", "f1", "auc", "threshold"}
    assert m["mean"]["accuracy"] == pytest.approx(np.mean([m["per_attribute"][n]["accuracy"] for n in labels]))
    # predictions.csv agrees with metrics.json: recompute accuracy from the written probabilities
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    probs = np.array([[float(r[f"p_{n}"]) for n in labels] for r in rows])
    y = np.array([[n in r["target"].split(",") for n in labels] for r in rows])
    acc = ((probs >= np.array(m["thresholds"]["thresholds"])) == y).mean(0)
    assert acc == pytest.approx([m["per_attribute"][n]["accuracy"] for n in labels], abs=1e-3)
    # plots, offline HTML, model card
    for name in ("reliability", "attributes", "subgroups"):
        _assert_png(result.files[name])
    assert any(k.startswith("top_losses_") for k in result.files)
    _assert_offline_html(run / "report.html")
    card = (run / "MODEL_CARD.md").read_text()
    assert "baseline" in card and "## Subgroups" in card and "Expected calibration error" in card
    assert "Male" in m["subgroups"] and "Young" in m["subgroups"]
    for sg in m["subgroups"].values():
        accs = [g["accuracy"] for g in sg["groups"].values() if g["n"] >= 5]
        assert sg["gap"] == pytest.approx(min(accs) - max(accs))


def test_thresholds_tuned_on_valid_are_saved_and_loaded(celeba_eval):
    from facelab.backends import load

    run, result = celeba_eval
    t = result.metrics["thresholds"]
    assert t["tuned"] and t["split"] == "valid" and t["n"] > 0
    saved = json.loads((run / "bundle" / "bundle.json").read_text())["task"]["thresholds"]
    assert saved == pytest.approx(t["thresholds"])
    assert load(run).task.thresholds == pytest.approx(tuple(t["thresholds"]))


def test_subjective_attribute_caveat():
    from facelab.evaluate import model_card

    task = Task("multilabel", ("Attractive", "Eyeglasses"))
    metrics = {"source": {"runs": ["runs/r"], "model": {}, "input": {}, "train": {}, "data": "x",
                          "split": "test", "evaluated": 10, "photos_in_source": 10,
                          "dropped_by_face_preparation": 0},
               "thresholds": {"tuned": False}, "accuracy": 0.8, "balanced_accuracy": 0.6, "auc": 0.7, "ece": 0.1,
               "macro_f1": 0.5, "baseline": {"accuracy": 0.79, "balanced_accuracy": 0.5},
               "calibration": {"count": [0] * 10}, "subgroups": {},
               "per_attribute": {"Attractive": {"accuracy": 0.8, "baseline_accuracy": 0.79, "balanced_accuracy": 0.6,
                                                "auc": 0.7},
                                 "Eyeglasses": {"accuracy": 0.79, "baseline_accuracy": 0.79,
                                                "balanced_accuracy": 0.52, "auc": 0.45}}}
    metrics["weak_labels"] = M.weak_labels(metrics)
    assert list(metrics["weak_labels"]) == ["Eyeglasses"] and "below chance" in metrics["weak_labels"]["Eyeglasses"]
    card = model_card(task, metrics)
    assert "Subjective labels" in card and "Attractive" in card
    assert "**Eyeglasses not learned**" in card and "Attractive not learned" not in card


def test_reports_escape_what_comes_from_the_data(tmp_path: Path):
    from facelab.evaluate import model_card, write_report

    task = Task("binary", ("not <b>x</b>", "<b>x</b>"), (0.5,))
    cls = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    metrics = {"source": {"runs": ["runs/a&b"], "model": {}, "input": {}, "train": {}, "data": "<script>x</script>",
                          "split": None, "evaluated": 4, "photos_in_source": 4, "dropped_by_face_preparation": 0},
               "thresholds": {"tuned": False, "why": "<i>none</i>"}, "accuracy": 0.5, "balanced_accuracy": 0.5,
               "auc": float("nan"), "ece": 0.1, "macro_f1": 0.5, "baseline": {"accuracy": 0.5, "balanced_accuracy": 0.5},
               "calibration": {"count": [0] * 10}, "subgroups": {}, "weak_labels": {"all": "<u>weak</u>"},
               "per_class": {n: cls for n in task.labels}}
    png = b"\x89PNG\r\n\x1a\n"
    html = write_report(tmp_path / "report.html", task, metrics, {"confusion": png, "reliability": png}).read_text()
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<b>x</b>" not in html and "<i>none</i>" not in html and "<u>weak</u>" not in html
    assert "runs/a&amp;b" in html
    card = model_card(task, metrics)
    assert "<script>" not in card and "&lt;b&gt;x&lt;/b&gt;" in card


def test_multiclass_on_training_source_scores_only_held_out_rows(orl_run: Path, orl_faces: Path, tmp_path: Path):
    out = tmp_path / "orl_eval"
    result = evaluate(orl_run, orl_faces, out=out, top_k=8, progress=False)
    m = result.metrics
    cfg = json.loads((orl_run / "config.json").read_text())
    if Path(cfg["data"]).resolve() == orl_faces.resolve():
        assert m["source"]["split"] == "valid rows held out by training"
        assert m["n"] < m["source"]["photos_in_source"] - m["source"]["dropped_by_face_preparation"]
    k = len(m["task"]["labels"])
    assert np.array(m["confusion_matrix"]).shape == (k, k) and np.sum(m["confusion_matrix"]) == m["n"]
    assert not m["thresholds"]["tuned"]
    _assert_png(result.files["confusion"])
    _assert_offline_html(out / "report.html")
    assert (out / "MODEL_CARD.md").is_file()


def test_old_run_without_split_json_recomputes_the_same_held_out_rows(orl_run: Path, orl_faces: Path,
                                                                     tmp_path: Path):
    run = _copy_run(orl_run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    if Path(cfg["data"]).resolve() != orl_faces.resolve():
        pytest.skip("the run was trained on another copy of the data")
    held = json.loads((run / "split.json").read_text())["valid"]
    (run / "split.json").unlink()  # as a run written before training saved its split
    m = evaluate(run, orl_faces, out=tmp_path / "o", top_k=0, progress=False).metrics
    assert m["source"]["split"] == "valid rows held out by training" and m["n"] == len(held)
    scored = {r["crop"] for r in csv.DictReader((tmp_path / "o" / "predictions.csv").open())}
    assert scored == set(held)


def test_uncropped_photos_go_through_the_bundles_face_preparation(binary_run: Path, celeba_wild: Path,
                                                                  tmp_path: Path):
    result = evaluate(binary_run, celeba_wild / "img_celeba", out=tmp_path / "wild", save_thresholds=False,
                      top_k=4, progress=False)
    src = result.metrics["source"]
    assert src["photos_in_source"] == 40
    assert src["evaluated"] == result.metrics["n"] >= 30  # faces found in (nearly) all wild photos
    assert "roc" in result.files and result.files["roc"].stat().st_size > 2000


def test_ensemble_mean_std_and_disagreement(binary_run: Path, orl_run: Path, celeba_mini: Path, tmp_path: Path):
    a, b = _copy_run(binary_run, tmp_path, "a"), _copy_run(binary_run, tmp_path, "b")
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "ensemble.json").write_text(json.dumps({"members": ["../a", str(b)]}))
    result = evaluate(ens, celeba_mini, progress=False, top_k=4, tune_split="valid")
    e = result.metrics["ensemble"]
    assert len(e["members"]) == 2 and e["mean_std"] == pytest.approx(0.0, abs=1e-6)  # identical members
    assert e["photos_with_disagreement"] == 0
    assert json.loads((ens / "ensemble.json").read_text())["thresholds"]  # tuned thresholds kept with it
    _assert_png(result.files["disagreement"])
    with pytest.raises(ValueError, match="disagree on the task"):
        evaluate([a, orl_run], celeba_mini, out=tmp_path / "x", progress=False)


def test_ensemble_spread_by_hand():
    task = Task("binary", ("no", "yes"))
    members = np.array([[[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [0.4, 0.6]], [[0.3, 0.7], [0.5, 0.5]]])
    std, disagree = ensemble_spread(task, members)
    assert std == pytest.approx([np.std([0.8, 0.6, 0.7]), np.std([0.4, 0.6, 0.5])])
    # photo 2: mean p = 0.5 -> yes; member 1 says no
    assert disagree == pytest.approx([0.0, 1 / 3])


def test_bad_inputs_give_clear_errors(celeba_run: Path, orl_run: Path, celeba_mini: Path, orl_faces: Path,
                                      tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        evaluate(tmp_path / "nope", celeba_mini)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="not a trained run"):
        evaluate(tmp_path / "empty_run", celeba_mini)
    with pytest.raises(DataError, match="one class per photo"):
        evaluate(celeba_run, orl_faces, out=tmp_path / "o1")
    with pytest.raises(DataError, match="not among the model's labels"):
        task_targets(load_source(orl_faces), Task("multiclass", ("s1", "s2")))
    empty = tmp_path / "empty_data"
    empty.mkdir()
    with pytest.raises(DataError):
        evaluate(orl_run, empty, out=tmp_path / "o2")
    with pytest.raises(ValueError, match="tune_metric"):
        EvaluateConfig(tune_metric="kappa")


def test_cli_evaluate_and_compare(binary_run: Path, orl_run: Path, celeba_mini: Path, tmp_path: Path):
    run = _copy_run(binary_run, tmp_path)
    r = CliRunner().invoke(app, ["evaluate", str(run), str(celeba_mini), "--top-k", "4"])
    assert r.exit_code == 0, r.output
    assert "balanced accuracy" in r.output and "thresholds not tuned: no valid split broad enough" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(run), str(celeba_mini), "--top-k", "4", "--tune-split", "valid"])
    assert r.exit_code == 0, r.output
    assert "saved to" in r.output and (run / "report.html").is_file()
    r = CliRunner().invoke(app, ["compare", str(run), str(orl_run), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert run.name in r.output
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert [r["run"] for r in rows] == [run.name, orl_run.name]
    assert rows[0]["metrics_from"].startswith("evaluate") and float(rows[0]["accuracy"]) >= 0
    assert int(rows[1]["parameters"]) > 0 and rows[1]["model"]
    _assert_png(tmp_path / "cmp" / "compare.png")
    _assert_offline_html(tmp_path / "cmp" / "compare.html")
    with pytest.raises(ValueError, match="no runs"):
        compare([])
