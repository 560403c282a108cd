"""`make demo`: the whole pipeline on one data source, each stage through the public API.

prepare -> train -> evaluate -> explain -> export -> predict. Every output lands under
``--out``; the paths of the reports are printed at the end.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import facelab

log = logging.getLogger("facelab.demo")


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run_demo(data: Path, out: Path, epochs: int, model: str | None) -> dict[str, Path]:
    """Run every stage once; return the path of each stage's main output."""
    outputs: dict[str, Path] = {}

    _step(f"prepare: detect, align and crop the faces in {data}")
    prep = facelab.prepare(data, out / "faces")
    print(prep.summary())
    outputs["preparation report"] = prep.html_path or prep.csv_path

    _step("train")
    options = {"out": str(out / "runs"), "name": "demo", "epochs": epochs, "overwrite": True}
    if model:
        options["model"] = model
    run = facelab.train(str(out / "faces"), **options)
    outputs["run folder"] = Path(run)

    _step("evaluate")
    result = facelab.evaluate(run, out / "faces")
    print(result.summary())
    outputs["evaluation report"] = result.files["report"]
    outputs["model card"] = result.files["model_card"]

    _step("explain")
    table = facelab.load_source(out / "faces")
    photos = [p for p, s in zip(table.paths, table.splits) if s in ("test", None)][:4]
    explained = facelab.explain(run, photos)
    outputs["explanations"] = explained.out

    _step("export to ONNX")
    exported = facelab.export(run)
    print(f"{exported.path}: max |ONNX - PyTorch| = {exported.max_abs_diff:.2e}")
    outputs["ONNX model"] = Path(exported.path)

    _step("predict on the photos")
    report = facelab.predict(run, photos)
    print(report.table())
    print(report.summary())
    return outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="a data source (class folders, CelebA layout, CSV)")
    parser.add_argument("--out", required=True, help="folder for every output")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", default=None, help="model name (default: facelab's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    outputs = run_demo(Path(args.data), Path(args.out), args.epochs, args.model)
    _step("done")
    for what, path in outputs.items():
        print(f"{what:>20}: {path}")


if __name__ == "__main__":
    main()
