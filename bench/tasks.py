"""The task suite: facelab's defaults on the jobs that bring people to facelab, judged on
PEOPLE THE MODEL NEVER SAW (or, for "tell two people apart", on new photos of them).

Every task is built as a user would hold the data (class folders, or the CelebA layout),
trained with ``facelab.train`` and scored with ``facelab.evaluate`` (the same code as
``facelab train`` / ``facelab evaluate``), and beside it, in the same run, fastai's
``vision_learner`` + ``fine_tune`` with its defaults on the same photos (facelab's face
crops of them) and the same offline ImageNet weights.

Tasks (``--tasks``, comma separated; default all that the data allows):

* ``pairs-celeba``: two celeba-mini people, 10 photos each to train, their 20 other photos
  to test; ``--pairs`` pairs. CNN default, ``face-embed``, fastai.
* ``pairs-orl``: two ORL people, 6 photos each to train, their 4 others to test.
* ``attr-Smiling``, ``attr-Mouth_Slightly_Open``: ~150 photos of celeba-mini's train/valid
  people in two class folders (no identity file), tested on its 4 test-partition people.
* ``five``: Smiling, Male, Young, Mouth_Slightly_Open, Wearing_Lipstick as one multi-label
  model on celeba-mini's official partition; scored on the test partition AND on the 40
  uncropped celeba-wild-mini photos (6 other people) through the bundle's own preparation.
* ``orl40``: the 40 ORL people, 6 photos each to train, 4 to test (greyscale).

Headline: balanced accuracy (mean over labels for multi-label) beside the best constant
answer (0.5 / 1 over the number of classes); also accuracy and its best constant answer,
ROC-AUC, train CPU-minutes (user + system time of this process and its workers).

    .venv/bin/python bench/tasks.py                      # table + bench/results/tasks.json
    .venv/bin/python bench/tasks.py --tasks five --no-fastai
    .venv/bin/python bench/tasks.py --facelab '{"model": "mobilenetv2_100", "image_size": 160}'

fastai is for benchmarks only (see bench/train.py for how to install it beside torch).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "tasks.json"
FIVE = ["Smiling", "Male", "Young", "Mouth_Slightly_Open", "Wearing_Lipstick"]
ALL_TASKS = ("pairs-celeba", "pairs-orl", "attr-Smiling", "attr-Mouth_Slightly_Open", "five", "orl40")
log = logging.getLogger("bench.tasks")


# --------------------------------------------------------------------------- task data

@dataclass
class TaskData:
    """One task as a user holds it: a training source and the test sources to score on."""

    name: str
    train: Path
    tests: dict[str, Path]
    attrs: list[str] | None = None
    people: bool = False
    """Classes are people (face-embed applies)."""
    test_split: str | None = None
    """The split of a test source to score (CelebA layout); None = every photo."""
    notes: dict[str, Any] = field(default_factory=dict)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _celeba_meta(root: Path) -> tuple[dict[str, str], dict[str, str], list[str], dict[str, np.ndarray]]:
    ids = dict(line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines() if line.strip())
    part_file = root / "list_eval_partition.txt"
    part = dict(line.split() for line in part_file.read_text().splitlines() if line.strip()) if part_file.is_file() else {}
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    attrs = {p[0]: (np.array(p[1:], int) > 0).astype(np.uint8) for p in (ln.split() for ln in lines[2:] if ln.strip())}
    return ids, part, names, attrs


def build_pairs_celeba(work: Path, n_pairs: int, seed: int) -> list[TaskData]:
    """Two people apart: 10 training photos each, their other photos as the test."""
    root = SHARED / "celeba-mini"
    ids, _, _, _ = _celeba_meta(root)
    by_person: dict[str, list[str]] = {}
    for f, p in sorted(ids.items()):
        by_person.setdefault(p, []).append(f)
    return _pairs(work / "pairs-celeba", {p: [root / "img_align_celeba" / f for f in fs] for p, fs in by_person.items()},
                  n_pairs, 10, seed, "pairs-celeba")


def build_pairs_orl(work: Path, n_pairs: int, seed: int) -> list[TaskData]:
    root = SHARED / "orl-faces"
    people = {d.name: sorted(d.glob("*.pgm"), key=lambda p: int(p.stem)) for d in sorted(root.glob("s*")) if d.is_dir()}
    return _pairs(work / "pairs-orl", people, n_pairs, 6, seed, "pairs-orl")


def _pairs(work: Path, people: dict[str, list[Path]], n_pairs: int, n_train: int, seed: int,
           name: str) -> list[TaskData]:
    rng = random.Random(seed)
    names = sorted(people)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n_pairs:
        pair = tuple(sorted(rng.sample(names, 2)))
        if pair not in pairs:
            pairs.append(pair)  # type: ignore[arg-type]
    out = []
    for a, b in pairs:
        d = work / f"{a}-{b}"
        for person in (a, b):
            photos = people[person][:]
            rng.shuffle(photos)
            for p in photos[:n_train]:
                _link(p, d / "train" / person / p.name)
            for p in photos[n_train:]:
                _link(p, d / "test" / person / p.name)
        out.append(TaskData(f"{name}:{a}-{b}", d / "train", {"new photos": d / "test"}, people=True))
    return out


def build_orl40(work: Path) -> list[TaskData]:
    root = SHARED / "orl-faces"
    d = work / "orl40"
    for person in sorted(p for p in root.glob("s*") if p.is_dir()):
        photos = sorted(person.glob("*.pgm"), key=lambda p: int(p.stem))
        for p in photos[:6]:
            _link(p, d / "train" / person.name / p.name)
        for p in photos[6:]:
            _link(p, d / "test" / person.name / p.name)
    return [TaskData("orl40", d / "train", {"new photos": d / "test"}, people=True)]


def build_attribute(work: Path, attr: str, n: int, seed: int) -> list[TaskData]:
    """~n photos of celeba-mini's train/valid people in X/ and not_X/ (no identity file);
    its test-partition people (never seen) in the same layout as the test."""
    root = SHARED / "celeba-mini"
    ids, part, names, attrs = _celeba_meta(root)
    j = names.index(attr)
    rng = random.Random(seed)
    pool = sorted(f for f in ids if part.get(f) in ("0", "1"))
    rng.shuffle(pool)
    pos = [f for f in pool if attrs[f][j]][:n // 2]
    neg = [f for f in pool if not attrs[f][j]][:n - len(pos)]
    d = work / f"attr-{attr}"
    for f in pos + neg:
        _link(root / "img_align_celeba" / f, d / "train" / (attr if attrs[f][j] else f"not_{attr}") / f)
    for f in sorted(f for f in ids if part.get(f) == "2"):
        _link(root / "img_align_celeba" / f, d / "test" / (attr if attrs[f][j] else f"not_{attr}") / f)
    people = len({ids[f] for f in pos + neg})
    return [TaskData(f"attr-{attr}", d / "train", {"test people": d / "test"},
                     notes={"train_photos": len(pos + neg), "train_people": people})]


def build_five() -> list[TaskData]:
    tests = {"test people": SHARED / "celeba-mini"}
    if (SHARED / "celeba-wild-mini").is_dir():
        tests["uncropped, other people"] = SHARED / "celeba-wild-mini"
    return [TaskData("five", SHARED / "celeba-mini", tests, attrs=FIVE, test_split="test")]


def build(task: str, work: Path, args: argparse.Namespace) -> list[TaskData]:
    if task == "pairs-celeba":
        return build_pairs_celeba(work, args.pairs, args.seed)
    if task == "pairs-orl":
        return build_pairs_orl(work, args.pairs, args.seed)
    if task.startswith("attr-"):
        return build_attribute(work, task[5:], args.attr_photos, args.seed)
    if task == "five":
        return build_five()
    if task == "orl40":
        return build_orl40(work)
    raise SystemExit(f"unknown task {task!r}; valid: {', '.join(ALL_TASKS)}")


# --------------------------------------------------------------------------- scoring

def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The suite's numbers out of an ``evaluate_predictions`` / ``facelab.evaluate`` metrics dict:
    balanced accuracy, accuracy, ROC-AUC and the best constant answer's scores (means over
    labels for multi-label), plus the per-attribute balanced accuracy and AUC."""
    out = {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"], "auc": m["auc"],
           "constant_accuracy": m["baseline"]["accuracy"],
           "constant_balanced_accuracy": m["baseline"]["balanced_accuracy"], "n": m["n"]}
    if m.get("per_attribute"):
        out["per_attribute"] = {n: {"balanced_accuracy": a["balanced_accuracy"], "auc": a["auc"]}
                                for n, a in m["per_attribute"].items()}
    return out


def run_facelab(td: TaskData, options: dict[str, Any], out: Path, label: str) -> dict[str, Any]:
    import facelab
    from facelab.evaluate import EvaluateConfig

    t0, c0 = time.perf_counter(), cpu_seconds()
    run = facelab.train(str(td.train), out=str(out), name=label, overwrite=True, attrs=td.attrs, progress=False,
                        tensorboard=False, **options)
    train_cpu, train_wall = cpu_seconds() - c0, time.perf_counter() - t0
    scores = {}
    for test_name, src in td.tests.items():
        split = td.test_split if src == td.train else None
        result = facelab.evaluate(run, src, out=out / f"{label}-eval-{len(scores)}",
                                  config=EvaluateConfig(split=split, save_thresholds=False, progress=False))
        scores[test_name] = {**headline(result.metrics), "weak_labels": sorted(result.metrics.get("weak_labels", {}))}
    bundle = json.loads((Path(run) / "bundle" / "bundle.json").read_text()) if (Path(run) / "bundle").is_dir() else {}
    history = (Path(run) / "metrics.csv").read_text().splitlines() if (Path(run) / "metrics.csv").is_file() else []
    cfg_file = Path(run) / "config.json"
    resolved = json.loads(cfg_file.read_text()).get("resolved", {}) if cfg_file.is_file() else {}
    return {"tool": "facelab", "config": label, "train_cpu_min": train_cpu / 60, "train_wall_s": train_wall,
            "epochs": resolved.get("epochs"), "batch_size": resolved.get("batch_size"),
            "best_epoch": bundle.get("train", {}).get("best_epoch"), "metrics_csv": history, "scores": scores}


def run_fastai(td: TaskData, model: str, size: int, epochs: int, batch: int, out: Path) -> dict[str, Any]:
    """fastai's defaults (vision_learner + fine_tune(epochs) with 1 frozen epoch and base_lr
    2e-3, aug_transforms, RandomSplitter 20% or the official partition, ImageNet statistics)
    on facelab's face crops of the same photos, with the same offline weights, image size,
    epochs and batch size as facelab's run (fastai's own bs=64 would leave a small folder
    without a single full training batch: fastai drops the last partial one)."""
    try:
        import fastai.vision.all as fv
    except ImportError:
        sys.exit("fastai is not installed; see bench/train.py for how, or run with --no-fastai")
    import pandas as pd
    import torch

    from facelab.data import load_source
    from facelab.evaluate import task_targets
    from facelab.models import create_model
    from facelab.prepare import prepare_table
    from facelab.tasks import infer_task

    def table_of(src: Path, split: str | None) -> Any:
        t = load_source(src)
        if td.attrs:
            t = t.select_attributes(td.attrs)
        if split is not None:
            t = t.split(split) if split != "train+valid" else t.subset([i for i, s in enumerate(t.splits) if s != "test"])
        return prepare_table(t, None, progress=False)

    def arch(pretrained: bool = True, **_: object) -> torch.nn.Module:
        net = create_model(model, 1, pretrained=pretrained)
        net.reset_classifier(0)
        return net

    t0, c0 = time.perf_counter(), cpu_seconds()
    train = table_of(td.train, "train+valid" if td.test_split else None)
    task = infer_task(train)
    y = task_targets(train, task)
    multi = task.kind == "multilabel"
    names = list(task.labels) if multi else [str(task.labels[int(v)]) for v in range(len(task.labels))]
    df = pd.DataFrame({"path": [str(p) for p in train.paths],
                       **({n: y[:, j].astype(int) for j, n in enumerate(names)} if multi
                          else {"label": [task.labels[int(v)] for v in y]})})
    if td.test_split:  # the official partition decides validation, as facelab uses it
        df["is_valid"] = [s == "valid" for s in train.splits]
        splitter = fv.ColSplitter("is_valid")
    else:
        splitter = fv.RandomSplitter(seed=0)
    y_block = fv.MultiCategoryBlock(encoded=True, vocab=names) if multi else fv.CategoryBlock(vocab=list(task.labels))
    block = fv.DataBlock(blocks=(fv.ImageBlock, y_block), get_x=fv.ColReader("path"),
                         get_y=fv.ColReader(names) if multi else fv.ColReader("label"), splitter=splitter,
                         item_tfms=fv.Resize(size),
                         batch_tfms=[*fv.aug_transforms(), fv.Normalize.from_stats(*fv.imagenet_stats)])
    dls = block.dataloaders(df, bs=batch, num_workers=0)
    learn = fv.vision_learner(dls, arch, pretrained=True, path=out)
    learn.fine_tune(epochs)
    train_cpu, train_wall = cpu_seconds() - c0, time.perf_counter() - t0
    scores = {}
    for test_name, src in td.tests.items():
        test = table_of(src, td.test_split if src == td.train else None)
        yt = task_targets(test, task)
        probs, _ = learn.get_preds(dl=dls.test_dl([str(p) for p in test.paths]))
        probs = probs.numpy()
        if not multi:  # fastai's vocab order is task.labels (sorted class names)
            assert list(dls.vocab) == list(task.labels), (list(dls.vocab), task.labels)
        from facelab import metrics as M

        scores[test_name] = headline(M.evaluate_predictions(task, probs, yt))
    return {"tool": "fastai", "config": f"{model}@{size} fine_tune({epochs}) bs {batch}", "train_cpu_min": train_cpu / 60,
            "train_wall_s": train_wall, "scores": scores}


# --------------------------------------------------------------------------- table

def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean per (task family, tool, config, test set) over the instances (pairs)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        family = r["task"].split(":")[0]
        for test_name, s in r["scores"].items():
            groups.setdefault((family, r["tool"], r["config"], test_name), []).append({**s, "cpu": r["train_cpu_min"]})
    out = []
    for (family, tool, config, test_name), items in groups.items():
        mean = {k: float(np.nanmean([i[k] for i in items])) for k in
                ("balanced_accuracy", "accuracy", "auc", "constant_accuracy", "constant_balanced_accuracy", "cpu")}
        bal = [i["balanced_accuracy"] for i in items]
        out.append({"task": family, "tool": tool, "config": config, "test": test_name, "instances": len(items),
                    "min_balanced_accuracy": float(np.min(bal)), **mean})
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    print(f"\n{'task':26s} {'test':24s} {'tool':8s} {'config':28s} {'n':>3s} {'bal.acc':>7s} {'(min)':>6s} "
          f"{'const':>5s} {'acc':>6s} {'const':>5s} {'AUC':>5s} {'CPU-min':>7s}")
    for s in sorted(summary, key=lambda s: (s["task"], s["test"], s["tool"] != "facelab", s["config"])):
        print(f"{s['task']:26s} {s['test'][:24]:24s} {s['tool']:8s} {s['config'][:28]:28s} {s['instances']:3d} "
              f"{s['balanced_accuracy']:7.3f} {s['min_balanced_accuracy']:6.3f} {s['constant_balanced_accuracy']:5.2f} "
              f"{s['accuracy']:6.3f} {s['constant_accuracy']:5.2f} {s['auc']:5.3f} {s['cpu']:7.2f}")


def write(path: Path, args: argparse.Namespace, rows: list[dict], started: float) -> None:
    import torch

    from facelab.train import DEFAULT_MODEL

    doc = {"command": " ".join(["bench/tasks.py", *sys.argv[1:]]), "default_model": DEFAULT_MODEL,
           "facelab_options": json.loads(args.facelab), "summary": summarise(rows), "runs": rows,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
           "wall_s": time.perf_counter() - started}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(ALL_TASKS))
    ap.add_argument("--pairs", type=int, default=4, help="pairs of people per pairs task")
    ap.add_argument("--attr-photos", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--facelab", default="{}", help="JSON of facelab.train options (default: facelab's defaults)")
    ap.add_argument("--label", default="default", help="name of the facelab configuration in the table")
    ap.add_argument("--no-face-embed", action="store_true")
    ap.add_argument("--no-facelab", action="store_true", help="only the peers (face-embed, fastai)")
    ap.add_argument("--no-fastai", action="store_true")
    ap.add_argument("--fastai-model", default=None, help="backbone for fastai [facelab's default]")
    ap.add_argument("--fastai-epochs", type=int, default=None,
                    help="fine_tune epochs [the epochs facelab's run resolved to]")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from facelab.models import get_spec
    from facelab.train import TrainConfig

    options = json.loads(args.facelab)
    cfg = TrainConfig(data=".", **options)
    fa_model = args.fastai_model or cfg.model
    fa_size = cfg.image_size or get_spec(fa_model).size
    fa_epochs = args.fastai_epochs or cfg.epochs or 4
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="facelab-tasks-") as tmp:
        work = Path(tmp)
        for task in [t for t in args.tasks.split(",") if t]:
            for td in build(task, work, args):
                print(f"--- {td.name}", flush=True)
                # the closures run in this same iteration (facelab's run fills `budget` for fastai's)
                runs: list[tuple[str, Callable[[], dict]]] = [] if args.no_facelab else [
                    ("facelab", lambda: run_facelab(td, options, work / "runs", args.label))]  # noqa: B023
                if td.people and not args.no_face_embed:
                    runs.append(("face-embed", lambda: run_facelab(td, {"model": "face-embed"}, work / "runs",  # noqa: B023
                                                                   "face-embed")))
                if not args.no_fastai:
                    runs.append(("fastai", lambda: run_fastai(  # noqa: B023
                        td, fa_model, fa_size, args.fastai_epochs or budget.get("epochs") or fa_epochs,  # noqa: B023
                        budget.get("batch_size") or 64, work / "fastai")))  # noqa: B023
                budget: dict[str, Any] = {}
                for tool, fn in runs:
                    r = {"task": td.name, "notes": td.notes, **fn()}
                    rows.append(r)
                    if tool == "facelab":
                        budget = {"epochs": r.get("epochs"), "batch_size": r.get("batch_size")}
                    first = next(iter(r["scores"].values()))
                    print(f"    {r['tool']:8s} {r['config'][:28]:28s} bal.acc {first['balanced_accuracy']:.3f} "
                          f"(const {first['constant_balanced_accuracy']:.2f}) AUC {first['auc']:.3f} "
                          f"CPU {r['train_cpu_min']:.2f} min", flush=True)
                    write(args.out, args, rows, started)
    print_table(summarise(rows))
    print(f"\nload average {os.getloadavg()}; written: {args.out}")


if __name__ == "__main__":
    main()
