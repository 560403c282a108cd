"""Benchmark of evaluate + explain: speed, and whether the CAM points at the face.

    .venv/bin/python bench/evaluate.py [--run runs/NAME] [--target Smiling] [--epochs 8]

Without --run it first trains the test suite's small model: smallvgg, 32 px, Smiling, on
celeba-mini (about 15 s on 2 cores). The run is evaluated on celeba-mini (speed, accuracy vs
the majority baseline). Then, for each CAM method, at the default layer (the last map at least
6 cells across) and at the network's last spatial layer (the old default), the "pointing game":
the share of photos whose heat map for --target, carried back onto the ORIGINAL photo, peaks
inside the detected face box; empty maps (no positive evidence) count as misses. Beside it:
the chance rate (face-box area / area of the crop's footprint on the photo) and the same
network with random weights (mean of 3 seeds; a control: it cannot know where a face is, so
a high rate there is the architecture's own bias, e.g. towards the crop's centre). Photos: the 40
uncropped celeba-wild-mini photos and the 120 celeba-mini test photos. Writes
bench/results/evaluate.json.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))
SEEDS = 3  # random-weight controls averaged


def _run(args: argparse.Namespace) -> Path:
    if args.run:
        return Path(args.run)
    from facelab.train import train

    return train(DATA / "celeba-mini", model="smallvgg", image_size=32, epochs=args.epochs, lr=5e-3, batch_size=32,
                 seed=0, out=str(REPO / "runs"), name="bench-evaluate", attrs=[args.target], overwrite=True,
                 progress=False, tensorboard=False)


def _photo_sets() -> dict[str, list[Path]]:
    mini = DATA / "celeba-mini"
    lines = (mini / "list_eval_partition.txt").read_text().split()
    return {"wild": sorted((DATA / "celeba-wild-mini" / "img_celeba").glob("*.jpg")),
            "mini-test": [mini / "img_align_celeba" / f for f, s in zip(lines[::2], lines[1::2]) if s == "2"]}


def _layers(X: Any, predictor: Any, crop: Any) -> dict[str, str]:
    net = X.torch_net(predictor)
    x = X.to_tensor(predictor, [crop], net)
    return {"default": X.find_cam_layer(net, x), "last spatial": X.find_cam_layer(net, x, min_side=2)}


def pointing_rows(predictor: Any, target: str) -> list[dict]:
    X = importlib.import_module("facelab.explain")
    controls = [X.randomized(predictor, seed) for seed in range(SEEDS)]
    rows = []
    for name, paths in _photo_sets().items():
        photos = X.face_photos(predictor.bundle["prepare"], paths)
        for which, layer in _layers(X, predictor, photos[0].crop).items():
            for method in X.CAM_METHODS:
                t0 = time.perf_counter()
                game = X.pointing_game(predictor, photos, target, method, layer)
                seconds = time.perf_counter() - t0
                base = np.mean([X.pointing_game(c, photos, target, method, layer).in_box for c in controls])
                rows.append({"photos": name, "n": game.photos, "layer": f"{which} ({layer})", "method": method,
                             "in_box": game.in_box, "empty": game.empty, "untrained_in_box": float(base),
                             "chance": game.chance, "ms_per_photo": 1000 * seconds / game.photos})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a trained run folder (default: train the small smallvgg Smiling model)")
    p.add_argument("--target", default="Smiling", help="label whose maps are scored (a face-local one)")
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    from facelab.backends import load
    from facelab.evaluate import evaluate

    run = _run(args)
    t0 = time.perf_counter()
    res = evaluate(run, DATA / "celeba-mini", out=REPO / "bench" / "results" / "evaluate-report",
                   save_thresholds=False, progress=False)
    eval_s = time.perf_counter() - t0
    predictor = load(run)
    rows = pointing_rows(predictor, args.target)
    result = {"run": str(run), "model": predictor.bundle["model"]["name"], "input": predictor.bundle["input"]["size"],
              "target": args.target, "evaluate_seconds": eval_s, "evaluated_photos": res.metrics["n"],
              "mean_accuracy": res.metrics["accuracy"], "baseline_accuracy": res.metrics["baseline"]["accuracy"],
              "cam": rows}
    out = REPO / "bench" / "results" / "evaluate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"run {run}: {result['model']} at {result['input']} px")
    print(f"evaluate: {res.metrics['n']} test photos (+ valid for tuning) in {eval_s:.1f} s; "
          f"mean accuracy {res.metrics['accuracy']:.3f} vs majority baseline {res.metrics['baseline']['accuracy']:.3f}")
    print(f"CAM for {args.target}: share of photos whose peak on the photo is inside the face box")
    print(f"{'photos':13s} {'layer':28s} {'method':9s} {'in box':>6s} {'empty':>6s} {'untrained':>9s} "
          f"{'chance':>6s} {'ms/photo':>8s}")
    for r in rows:
        print(f"{r['photos'] + ' ' + str(r['n']):13s} {r['layer'][:28]:28s} {r['method']:9s} {r['in_box']:6.2f} "
              f"{r['empty']:6.2f} {r['untrained_in_box']:9.2f} {r['chance']:6.2f} {r['ms_per_photo']:8.1f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
