"""Benchmark the face-embed identity model against CNNs trained with `facelab train`.

On orl-faces (40 people x 10) and celeba-mini identities (30 people x 30), all photos go
through the default face preparation once (cached). Then:

* few-shot accuracy: k = 1, 3, 5, 10 training photos per person (ORL: 9 instead of 10,
  it has 10 photos per person), tested on each person's other photos, mean over
  ``--reps`` random draws, for face-embed (logreg and knn heads) and, on the first draw,
  for CNNs trained by ``facelab.train`` on the same crops (``--cnn``: the best transfer
  model and the lenet5 from-scratch baseline, ``--epochs`` epochs);
* two-person accuracy with 1, 3 and 10 photos each (ORL: 9): every pair of celeba-mini
  people (435) and of ORL people (780), one random draw each;
* unknown people: face-embed on 20 celeba-mini people (10 photos each; ORL: 30 people x
  5), every photo in the gallery and the threshold calibrated leave-one-out as
  ``facelab train`` does (fewest errors, and a 2% false-accept target), then shown the
  other people: strangers let in; and the known people's other photos: turned away;
* verification: all same-person pairs and as many random different-person pairs of
  celeba-mini photos, accuracy at dlib's 0.6 and at a threshold chosen by 10-fold CV;
* enrolment time (add one person with 10 photos to a run).

    .venv/bin/python bench/people.py                    # table + bench/results/people.json
    .venv/bin/python bench/people.py --cnn none         # face-embed only (fast)
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))
SETS = {"orl-faces": DATA / "orl-faces", "celeba-mini": DATA / "celeba-mini"}
RESULTS = REPO / "bench" / "results"


def load_set(name: str) -> dict:
    """Prepared crops, embeddings and person index of every photo of one set."""
    from facelab.data import load_source
    from facelab.embed import embed_paths, identity_prepare, template_landmarks
    from facelab.people import identity_table
    from facelab.prepare import prepare_table

    t0 = time.perf_counter()
    table = identity_table(load_source(SETS[name]))
    prep = identity_prepare(None)  # the face preparation facelab train uses for face-embed
    crops = prepare_table(table, prep, progress=False)
    emb = embed_paths(crops.paths, template_landmarks(prep), progress=True)
    return {"name": name, "paths": list(crops.paths), "labels": crops.labels, "emb": emb,
            "people": list(crops.label_names), "photos": len(table), "faces": len(crops),
            "seconds": time.perf_counter() - t0}


def draw(labels: np.ndarray, k: int, rng: np.random.Generator,
         people: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k training rows per person (people with more than k photos), the rest as test rows."""
    train, test = [], []
    for c in (np.unique(labels) if people is None else people):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) > k:
            train += rows[:k].tolist()
            test += rows[k:].tolist()
    return np.array(train), np.array(test)


def embed_accuracy(s: dict, train: np.ndarray, test: np.ndarray, head: str) -> float:
    from facelab.people import FaceEmbedConfig, Gallery, IdentityModel

    ytr = s["labels"][train]
    classes = np.unique(ytr)
    remap = {c: i for i, c in enumerate(classes)}
    gallery = Gallery(s["emb"][train], np.array([remap[c] for c in ytr]), [""] * len(train))
    model = IdentityModel.fit([str(c) for c in classes], gallery, FaceEmbedConfig(head=head))
    pred = classes[model.probs(s["emb"][test]).argmax(1)]
    return float((pred == s["labels"][test]).mean())


def cnn_accuracy(s: dict, train: np.ndarray, test: np.ndarray, model: str, epochs: int, work: Path) -> dict:
    """Train ``model`` with facelab.train on the same crops; accuracy on the test rows."""
    from facelab.train import train as train_api
    from facelab._io import write_json
    from facelab.backends import load
    from facelab.data import PREPARED_MANIFEST
    from facelab.images import read_image
    from facelab.embed import identity_prepare

    folder = work / "data"
    if folder.exists():
        shutil.rmtree(folder)
    for split, rows in (("train", train), ("valid", test)):
        for i in rows:
            dst = folder / split / f"p{s['labels'][i]:03d}" / f"{i}{s['paths'][i].suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(s["paths"][i])
    # the crops are already prepared: say so, or training would detect and align them again
    write_json(folder / PREPARED_MANIFEST, {"config": identity_prepare(None).to_dict()})
    t0 = time.perf_counter()
    run = train_api(str(folder), model=model, epochs=epochs, out=str(work), name=f"run-{model}",
                    overwrite=True, progress=False, threads=2, batch_size=16)
    sec = time.perf_counter() - t0
    predictor = load(run)
    probs = np.concatenate([predictor.predict_crops([read_image(s["paths"][i]) for i in test[j:j + 64]])
                            for j in range(0, len(test), 64)])
    names = [predictor.labels[i] for i in probs.argmax(1)]
    truth = [f"p{s['labels'][i]:03d}" for i in test]
    return {"acc": float(np.mean([a == b for a, b in zip(names, truth)])), "train_seconds": sec}


def two_person(s: dict, k: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    accs = []
    for a, b in itertools.combinations(np.unique(s["labels"]), 2):
        train, test = draw(s["labels"], k, rng, np.array([a, b]))
        if len(np.unique(s["labels"][train])) < 2:  # one of them has no photo left to test
            continue
        accs.append(embed_accuracy(s, train, test, "logreg"))
    acc = np.array(accs)
    return {"pairs": len(acc), "k": k, "mean_acc": float(acc.mean()), "worst_pair_acc": float(acc.min()),
            "pairs_below_100": int((acc < 1).sum())}


def unknown_rates(s: dict, n_known: int, k: int, seed: int, target_far: float | None = None,
                  rule: str = "centroid") -> dict:
    """Calibrate like train_face_embed on n_known people; strangers = the other people."""
    from facelab.people import FaceEmbedConfig, Gallery, IdentityModel, calibrate_threshold, open_set_distance
    from facelab.people import open_set_scores

    rng = np.random.default_rng(seed)
    people = rng.permutation(np.unique(s["labels"]))
    known, strangers = people[:n_known], people[n_known:]
    rows = np.flatnonzero(np.isin(s["labels"], known))
    remap = {c: i for i, c in enumerate(known)}
    # k photos per known person, all in the gallery; threshold calibrated leave-one-out (the train default)
    chosen = np.concatenate([rng.permutation(rows[s["labels"][rows] == c])[:k] for c in known])
    y = np.array([remap[c] for c in s["labels"][chosen]])
    gallery = Gallery(s["emb"][chosen], y, [""] * len(chosen))
    cfg = FaceEmbedConfig(unknown_score=rule)
    cal = calibrate_threshold(*open_set_scores(gallery, rule), target_far)
    model = IdentityModel.fit([str(c) for c in known], gallery, cfg, cal.threshold)
    others = np.flatnonzero(np.isin(s["labels"], strangers))
    rest = np.setdiff1d(rows, chosen)
    names_rest = model.identify(s["emb"][rest])[0]
    d_strangers = open_set_distance(s["emb"][others], gallery, rule)
    truth = [str(c) for c in s["labels"][rest]]
    return {"known_people": n_known, "photos_per_person": k, "rule": rule, "target_far": target_far,
            "threshold": cal.threshold,
            "calibration_far": cal.far, "calibration_frr": cal.frr,
            "strangers": len(others), "stranger_far": float((d_strangers <= cal.threshold).mean()),
            "known_test_photos": len(rest),
            "known_frr": float(np.mean([n == "unknown" for n in names_rest])),
            "known_open_set_acc": float(np.mean([n == t for n, t in zip(names_rest, truth)]))}


def verification(s: dict, seed: int, folds: int = 10) -> dict:
    from facelab.embed import distance
    from facelab.people import calibrate_threshold

    rng = np.random.default_rng(seed)
    d = distance(s["emb"], s["emb"])
    iu = np.triu_indices(len(d), k=1)
    same = s["labels"][iu[0]] == s["labels"][iu[1]]
    pos = d[iu][same]
    neg = rng.choice(d[iu][~same], size=len(pos), replace=False)
    dist = np.concatenate([pos, neg])
    truth = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = rng.permutation(len(dist))
    correct = 0
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        cal = calibrate_threshold(dist[train][truth[train]], dist[train][~truth[train]])
        correct += int(((dist[test] <= cal.threshold) == truth[test]).sum())
    return {"same_pairs": len(pos), "different_pairs": len(neg),
            "acc_at_0.6": float(((dist <= 0.6) == truth).mean()), "acc_cv_threshold": correct / len(dist)}


def enroll_time(s: dict, work: Path) -> dict:
    """Train a small run (5 people), then time enrolling a 6th with 10 photos."""
    from facelab.data import load_source
    from facelab.people import FaceEmbedConfig, enroll, train_face_embed

    folder = work / "enroll"
    by_person = {c: np.flatnonzero(s["labels"] == c) for c in np.unique(s["labels"])[:6]}
    for c, rows in list(by_person.items())[:5]:
        for i in rows[:10]:
            dst = folder / f"p{c}" / s["paths"][i].name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(s["paths"][i])
    t0 = time.perf_counter()
    run = train_face_embed(load_source(folder), FaceEmbedConfig(), work / "enroll-run", progress=False)
    train_sec = time.perf_counter() - t0
    newcomer = list(by_person.values())[5][:10]
    t0 = time.perf_counter()
    enroll(run, "newcomer", [s["paths"][i] for i in newcomer])
    return {"train_seconds_5_people": train_sec, "enroll_seconds_10_photos": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="random draws per k (face-embed)")
    ap.add_argument("--cnn", default="efficientnet_lite0,lenet5",
                    help="comma-separated facelab.train models to compare ('none' to skip)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs for each CNN")
    ap.add_argument("--cnn-k", default="1,3,5,10", help="the k values that also train the CNNs (slow on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--open-set-draws", type=int, default=10, help="random known/stranger draws per open-set row")
    ap.add_argument("--out", type=Path, default=RESULTS / "people.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from facelab._io import write_json

    cnns = [] if args.cnn == "none" else args.cnn.split(",")
    cnn_k = {int(k) for k in args.cnn_k.split(",")}
    work = Path(tempfile.mkdtemp(prefix="facelab-bench-people-"))
    results: dict = {"cnn_epochs": args.epochs, "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                                 "note": "shared 2-core machine; timings are noisy"},
                     "sets": {}, "few_shot": [], "two_person": {}, "unknown": {}, "verification": {}}
    try:
        sets = {name: load_set(name) for name in SETS}
        for name, s in sets.items():
            results["sets"][name] = {k: s[k] for k in ("photos", "faces", "seconds")} | {"people": len(s["people"])}
            for k in (1, 3, 5, 10):
                k_eff = min(k, 9) if name == "orl-faces" else k
                rng = np.random.default_rng(args.seed)
                draws = [draw(s["labels"], k_eff, rng) for _ in range(args.reps)]
                row = {"set": name, "k": k_eff, "test_photos": len(draws[0][1])}
                for head in ("logreg", "knn"):
                    row[f"face-embed/{head}"] = float(np.mean([embed_accuracy(s, tr, te, head) for tr, te in draws]))
                for model in (cnns if k in cnn_k else []):
                    try:
                        row[model] = cnn_accuracy(s, *draws[0], model, args.epochs, work)["acc"]
                    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
                        row[model] = None
                        results.setdefault("errors", []).append(f"{model} {name} k={k_eff}: {exc}")
                results["few_shot"].append(row)
                print(json.dumps(row), flush=True)
                write_json(args.out.with_suffix(".partial.json"), results)
            results["two_person"][name] = [two_person(s, min(k, 9) if name == "orl-faces" else k, args.seed) for k in (1, 3, 10)]
        for (name, n_known, k), rule, target in itertools.product(
                (("celeba-mini", 20, 10), ("orl-faces", 30, 5)), ("centroid", "nearest"), (None, 0.02)):
            runs = [unknown_rates(sets[name], n_known, k, args.seed + r, target, rule) for r in range(args.open_set_draws)]
            tag = f"{name}, {rule}, {'fewest errors' if target is None else f'target FAR {target}'}"
            results["unknown"][tag] = {"draws": runs, **{key: _spread([r[key] for r in runs]) for key in
                                                         ("stranger_far", "known_frr", "known_open_set_acc")},
                                       "known_people": n_known, "photos_per_person": k,
                                       "strangers": runs[0]["strangers"]}
        results["verification"]["celeba-mini"] = verification(sets["celeba-mini"], args.seed)
        results["enroll"] = enroll_time(sets["celeba-mini"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, results)
    print_tables(results, cnns)
    print(f"\nwrote {args.out}")


def _spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def _range(v: dict) -> str:
    return f"{_pct(v['median'])} [{_pct(v['min'])}, {_pct(v['max'])}]"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def print_tables(r: dict, cnns: list[str]) -> None:
    cols = ["face-embed/logreg", "face-embed/knn", *cnns]
    print("\nfew-shot accuracy (k training photos per person, rest tested)")
    print(f"| set | k | test photos | {' | '.join(cols)} |  (CNNs: {r.get('cnn_epochs')} epochs, one draw)")
    print("|---|---|---|" + "---|" * len(cols))
    for row in r["few_shot"]:
        print(f"| {row['set']} | {row['k']} | {row['test_photos']} | "
              + " | ".join(_pct(row.get(c)) for c in cols) + " |")
    print("\ntwo-person accuracy, face-embed/logreg (every pair of people)")
    print("| set | photos each | pairs | mean | worst pair | pairs < 100% |\n|---|---|---|---|---|---|")
    for name, rows in r["two_person"].items():
        for t in rows:
            print(f"| {name} | {t['k']} | {t['pairs']} | {_pct(t['mean_acc'])} | {_pct(t['worst_pair_acc'])} | "
                  f"{t['pairs_below_100']} |")
    print("\nunknown people (threshold calibrated leave-one-out; median [min, max] over the draws)")
    print("| set, score, threshold rule | known people x photos | strangers | strangers let in | known turned away "
          "| known open-set acc |")
    print("|---|---|---|---|---|---|")
    for name, u in r["unknown"].items():
        print(f"| {name} | {u['known_people']} x {u['photos_per_person']} | {u['strangers']} | "
              f"{_range(u['stranger_far'])} | {_range(u['known_frr'])} | {_range(u['known_open_set_acc'])} |")
    v = r["verification"]["celeba-mini"]
    print(f"\nverification, celeba-mini: {v['same_pairs']} same + {v['different_pairs']} different pairs: "
          f"{_pct(v['acc_at_0.6'])} at 0.6, {_pct(v['acc_cv_threshold'])} with a 10-fold CV threshold")
    e = r["enroll"]
    print(f"enroll 10 photos of a new person: {e['enroll_seconds_10_photos']:.1f} s "
          f"(training a run of 5 people x 10 photos: {e['train_seconds_5_people']:.1f} s)")
    for err in r.get("errors", []):
        print("error:", err)


if __name__ == "__main__":
    main()
