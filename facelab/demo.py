"""`make demo`: the whole pipeline on one data source, each stage through the public API.

prepare -> train -> evaluate -> explain -> export -> predict. With CelebA-layout data the
default model learns a few clear attributes (smiling, male, young, mouth open, lipstick),
is scored on the test partition's people (never seen in training) beside the best
constant answer, and then predicts uncropped photos of other people (celeba-wild-mini)
with their true labels beside the predictions. Every output lands under ``--out``; the
paths of the reports are printed at the end.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import facelab

log = logging.getLogger("facelab.demo")

#: Attributes that are visible in the face and take both values among celeba-mini's test people.
CLEAR_ATTRIBUTES = ["Smiling", "Male", "Young", "Mouth_Slightly_Open", "Wearing_Lipstick"]


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run_demo(data: Path, out: Path, epochs: int | None, model: str | None, attrs: list[str] | None,
             wild: Path | None) -> dict[str, Path]:
    """Run every stage once; return the path of each stage's main output."""
    outputs: dict[str, Path] = {}

    _step(f"prepare: detect, align and crop the faces in {data}")
    prep = facelab.prepare(data, out / "faces")
    print(prep.summary())
    outputs["preparation report"] = prep.html_path or prep.csv_path

    table = facelab.load_source(out / "faces")
    attrs = [a for a in (attrs or []) if a in table.label_names] if table.kind == "attributes" else None
    _step("train" + (f" the default model on {', '.join(attrs)}" if attrs else ""))
    options: dict[str, Any] = {"out": str(out / "runs"), "name": "demo", "overwrite": True, "attrs": attrs or None}
    if epochs:
        options["epochs"] = epochs
    if model:
        options["model"] = model
    run = facelab.train(str(out / "faces"), **options)
    outputs["run folder"] = Path(run)

    _step("evaluate on people the model never saw")
    result = facelab.evaluate(run, out / "faces")
    print(result.summary())
    print(_per_label(result.metrics))
    outputs["evaluation report"] = result.files["report"]
    outputs["model card"] = result.files["model_card"]

    photos = [p for p, s in zip(table.paths, table.splits) if s in ("test", None)][:4]
    _step("explain")
    explained = facelab.explain(run, photos)
    outputs["explanations"] = explained.out

    _step("export to ONNX")
    exported = facelab.export(run)
    print(f"{exported.path}: max |ONNX - PyTorch| = {exported.max_abs_diff:.2e}")
    outputs["ONNX model"] = Path(exported.path)

    if wild is not None and wild.is_dir() and attrs:
        _step(f"predict uncropped photos of other people ({wild})")
        print(predict_against_truth(run, wild, attrs))
    else:
        _step("predict on the photos")
        report = facelab.predict(run, photos)
        print(report.table())
        print(report.summary())
    return outputs


def _per_label(metrics: dict) -> str:
    rows = metrics.get("per_attribute")
    if not rows:
        return ""
    lines = [f"{'attribute':22s} {'balanced acc.':>13s} {'ROC-AUC':>8s} {'accuracy':>9s} {'best constant':>14s}"]
    for name, a in rows.items():
        lines.append(f"{name:22s} {a['balanced_accuracy']:13.3f} {a['auc']:8.3f} {a['accuracy']:9.3f} "
                     f"{a['baseline_accuracy']:14.3f}")
    lines.append(f"{'mean':22s} {metrics['balanced_accuracy']:13.3f} {metrics['auc']:8.3f} {metrics['accuracy']:9.3f} "
                 f"{metrics['baseline']['accuracy']:14.3f}   (a constant answer's balanced accuracy: 0.500)")
    return "\n".join(lines)


def predict_against_truth(run: Path, wild: Path, attrs: list[str]) -> str:
    """Each uncropped photo: the model's decision per attribute beside the truth (x = wrong)."""
    import numpy as np

    source = facelab.load_source(wild).select_attributes(attrs)
    truth = {Path(p).name: row for p, row in zip(source.paths, source.labels)}
    report = facelab.predict(run, source.paths, progress=False)
    task = report.task
    head = " ".join(f"{a[:9]:>10s}" for a in attrs)
    lines = [f"{'photo':12s} {head}   (model / truth; x marks a wrong answer)"]
    right = np.zeros(len(attrs))
    counted = 0
    for photo in report.photos:
        name = Path(photo.path).name
        if not photo.faces:
            lines.append(f"{name:12s} {photo.status}: {photo.reason}")
            continue
        decided = task.decide(np.asarray(photo.faces[0].probs)[None])[0]
        true = truth[name]
        cells = [f"{'yes' if d else 'no':>3s}/{'yes' if t else 'no':3s}{' ' if d == t else 'x'}" for d, t in zip(decided, true)]
        lines.append(f"{name:12s} " + " ".join(f"{c:>10s}" for c in cells))
        right += decided == true
        counted += 1
    if counted:
        lines.append(f"{'right':12s} " + " ".join(f"{r / counted:10.0%}" for r in right)
                     + f"   ({counted} photos with a face; {report.summary()})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="a data source (class folders, CelebA layout, CSV)")
    parser.add_argument("--out", required=True, help="folder for every output")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: facelab's default)")
    parser.add_argument("--model", default=None, help="model name (default: facelab's default)")
    parser.add_argument("--attrs", default=",".join(CLEAR_ATTRIBUTES),
                        help="attributes to learn from CelebA-layout data (comma separated; '' = all)")
    parser.add_argument("--wild", type=Path, default=None,
                        help="uncropped CelebA-layout photos to predict with their labels "
                             "[../celeba-wild-mini beside --data, when present]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = Path(args.data)
    wild = args.wild if args.wild is not None else data.parent / "celeba-wild-mini"
    attrs = [a.strip() for a in args.attrs.split(",") if a.strip()]
    outputs = run_demo(data, Path(args.out), args.epochs, args.model, attrs, wild)
    _step("done")
    for what, path in outputs.items():
        print(f"{what:>20}: {path}")


if __name__ == "__main__":
    main()
