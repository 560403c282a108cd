"""Benchmark of evaluate + explain: speed, and where the CAM peaks on real uncropped photos.

    .venv/bin/python bench/evaluate.py [--run runs/NAME] [--epochs 3]

Without --run it first trains lenet5 (64 px) on celeba-mini (Smiling, Male, Eyeglasses, Young).
For each CAM method: seconds per photo, and the share of celeba-wild-mini photos whose heat-map
peak (mapped back onto the photo) falls inside the detected face box, beside the chance rate
(face-box area / area of the crop's footprint on the photo). Writes bench/results/evaluate.json.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def _run(args: argparse.Namespace) -> Path:
    if args.run:
        return Path(args.run)
    from facelab.train import train

    return train(DATA / "celeba-mini", model="lenet5", image_size=64, epochs=args.epochs, out=str(REPO / "runs"),
                 name="bench-evaluate", attrs=["Smiling", "Male", "Eyeglasses", "Young"], overwrite=True,
                 progress=False, tensorboard=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    from facelab.bundle import load
    from facelab.evaluate import evaluate

    run = _run(args)
    t0 = time.perf_counter()
    res = evaluate(run, DATA / "celeba-mini", out=REPO / "bench" / "results" / "evaluate-report",
                   save_thresholds=False, progress=False)
    eval_s = time.perf_counter() - t0
    X = importlib.import_module("facelab.explain")
    predictor = load(run)
    photos = sorted((DATA / "celeba-wild-mini" / "img_celeba").glob("*.jpg"))
    rows = []
    for method in X.CAM_METHODS:
        inside, chance, n, t0 = 0, [], 0, time.perf_counter()
        for path in photos:
            e = X.explain_photo(predictor, path, X.ExplainConfig(method=method, feature_maps=False))
            if e is None:
                continue
            n += 1
            y, x = np.unravel_index(e.cam_original.argmax(), e.cam_original.shape)
            x0, y0, x1, y1 = e.face.box
            inside += x0 <= x <= x1 and y0 <= y <= y1
            foot = X.to_original(np.ones_like(e.cam), e.face, predictor.bundle["prepare"], e.original.shape)
            chance.append((x1 - x0) * (y1 - y0) / max(float((foot > 0.5).sum()), 1.0))
        rows.append({"method": method, "photos": n, "s_per_photo": (time.perf_counter() - t0) / max(n, 1),
                     "peak_in_face_box": inside / max(n, 1), "chance": float(np.mean(chance))})
    result = {"run": str(run), "model": predictor.bundle["model"]["name"], "input": predictor.bundle["input"]["size"],
              "evaluate_seconds": eval_s, "evaluated_photos": res.metrics["n"],
              "mean_accuracy": res.metrics["accuracy"], "baseline_accuracy": res.metrics["baseline"]["accuracy"],
              "cam": rows}
    out = REPO / "bench" / "results" / "evaluate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"evaluate: {res.metrics['n']} test photos (+ valid for tuning) in {eval_s:.1f} s; "
          f"mean accuracy {res.metrics['accuracy']:.3f} vs majority baseline {res.metrics['baseline']['accuracy']:.3f}")
    print(f"{'method':10s} {'photos':>6s} {'s/photo':>8s} {'peak in face box':>17s} {'chance':>7s}")
    for r in rows:
        print(f"{r['method']:10s} {r['photos']:6d} {r['s_per_photo']:8.3f} {r['peak_in_face_box']:17.2f} {r['chance']:7.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
