"""CelebA-sized benchmark: 40 attributes, official test partition, a CPU training budget.

The issue's target: a mean 40-attribute accuracy of at least 89% on CelebA's official test
partition within 30 CPU minutes of training. ``data/celeba-16k`` (15,723 real CelebA photos,
built by ``bench/make_celeba16k.py``) holds 14,283 train / 780 valid / 660 test photos.

Steps, each timed: face preparation of the raw photos (``facelab.prepare``, cached: a second
run reads the cache), ``facelab.train`` (wall time and the process's CPU time), and
``facelab.evaluate`` on the official test partition with per-attribute thresholds tuned on
the official validation partition. Test photos in which no face was found count as wrong
for every attribute (they are reported, not dropped). Prints a table per attribute beside
the majority baseline (each attribute's most frequent TRAINING value) and writes
``bench/results/celeba40.json``.

    .venv/bin/python bench/make_celeba16k.py --mirrors /work/.mirror
    .venv/bin/python bench/celeba40.py --model efficientnet_lite0 --size 96 --epochs 6
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "celeba40.json"


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def prepare_crops(data: Path, size: int) -> tuple[Path, dict]:
    """Raw CelebA photos -> an aligned-crop folder (the `facelab prepare` output layout)."""
    from facelab.prepare import prepare

    out = REPO / "data" / f"{data.name}-crops{size}"
    t0, c0 = time.perf_counter(), cpu_seconds()
    report = prepare(data, out, config={"size": size}, progress=True)
    return out, {"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0, "summary": report.summary()}


def _run_seconds(run: Path) -> float:
    """Training wall time of a finished run: the sum of its metrics.csv epoch times."""
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return float(sum(float(r["time"]) for r in csv.DictReader(f)))


def test_rows(data: Path) -> list[str]:
    lines = (data / "list_eval_partition.txt").read_text().split("\n")
    return [f for f, s in (line.split() for line in lines if line.strip()) if s == "2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "celeba-16k")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=96, help="network input side")
    ap.add_argument("--crop-size", type=int, default=160, help="side of the prepared crops on disk")
    ap.add_argument("--epochs", type=int, default=6, help="epochs after the frozen one")
    ap.add_argument("--freeze-epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-minutes", type=float, default=30.0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--crops", type=Path, default=None, help="an already prepared crop folder (skips prepare)")
    ap.add_argument("--run", type=Path, default=None,
                    help="evaluate this finished run instead of training (its times come from its metrics.csv)")
    args = ap.parse_args()
    if not (args.data / "list_attr_celeba.txt").is_file():
        sys.exit(f"{args.data}: no CelebA data there; build it with bench/make_celeba16k.py (see its docstring)")

    import torch

    from facelab.evaluate import evaluate
    from facelab.train import train

    torch.set_num_threads(args.threads)
    crops, prep = (args.crops, {"skipped": str(args.crops)}) if args.crops else prepare_crops(args.data, args.crop_size)
    if args.run:
        run, train_cpu = args.run, None
        train_s = _run_seconds(run)
        cfg = json.loads((run / "config.json").read_text())
        args.model, args.size = cfg.get("model", args.model), cfg.get("image_size", args.size)
        args.epochs, args.freeze_epochs = cfg.get("epochs", args.epochs), cfg.get("freeze_epochs", args.freeze_epochs)
    else:
        name = args.name or f"celeba40-{args.model}-{args.size}"
        t0, c0 = time.perf_counter(), cpu_seconds()
        run = train(str(crops), model=args.model, image_size=args.size, epochs=args.epochs,
                    freeze_epochs=args.freeze_epochs, batch_size=args.batch, lr=args.lr, threads=args.threads,
                    out=str(REPO / "runs"), name=name, overwrite=True, progress=True, tensorboard=False)
        train_s, train_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    res = evaluate(run, crops, out=REPO / "bench" / "results" / "celeba40-report", progress=False)
    m = res.metrics
    n_test = len(test_rows(args.data))
    found = int(m["n"])
    # Test photos with no face found count as wrong for all 40 attributes.
    scale = found / n_test
    per = {k: v for k, v in m["per_attribute"].items()}
    rows = [{"attribute": k, "accuracy": v["accuracy"] * scale, "baseline": v["baseline_accuracy"],
             "balanced_accuracy": v["balanced_accuracy"], "auc": v["auc"]} for k, v in per.items()]
    mean_acc = float(np.mean([r["accuracy"] for r in rows]))
    mean_base = float(np.mean([r["baseline"] for r in rows]))
    doc = {"data": str(args.data), "model": args.model, "size": args.size, "epochs": args.epochs,
           "freeze_epochs": args.freeze_epochs, "batch": args.batch, "threads": args.threads,
           "prepare": prep, "train_wall_s": train_s, "train_cpu_s": train_cpu,
           "budget_s": args.budget_minutes * 60, "within_budget": train_s <= args.budget_minutes * 60,
           "test_photos": n_test, "test_faces_found": found, "mean_accuracy": mean_acc,
           "mean_accuracy_faces_found": float(m["accuracy"]), "majority_mean": mean_base,
           "mean_balanced_accuracy": float(m["balanced_accuracy"]), "per_attribute": rows, "run": str(run),
           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "command": " ".join(["bench/celeba40.py", *sys.argv[1:]])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'attribute':20s} {'test acc':>8s} {'majority':>8s} {'bal acc':>8s} {'AUC':>6s}")
    for r in sorted(rows, key=lambda r: r["accuracy"] - r["baseline"]):
        print(f"{r['attribute']:20s} {r['accuracy']:8.3f} {r['baseline']:8.3f} {r['balanced_accuracy']:8.3f} "
              f"{r['auc']:6.3f}")
    cpu = f" ({train_cpu / 60:.1f} CPU min)" if train_cpu is not None else ""
    print(f"\n{args.model} {args.size}px, {args.freeze_epochs} frozen + {args.epochs} epochs, {args.threads} threads: "
          f"train {train_s / 60:.1f} min wall{cpu} of a {args.budget_minutes:.0f}-min budget")
    print(f"official test partition: {found}/{n_test} faces found; mean accuracy {mean_acc:.4f} "
          f"(majority baseline {mean_base:.4f}; target 0.89)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
