"""Benchmark `facelab train` as the photos grow: peak memory and images/s, crops streamed
from a crop store (``--loader stream``) vs decoded into memory (``--loader memory``).

The data: celeba-mini prepared once (``facelab prepare``: 900 aligned 224 px JPEG crops, the
official partition), then its 660 TRAINING crops REPEATED to N training rows (symbolic
links, so N real files for facelab; the pixels repeat), the 120 valid crops once, no test.
Sizes are the number of training rows. Same data, model and steps for both loaders:
efficientnet_lite0 at 96 px, 40 attributes, batch 64, one epoch of ``--steps`` steps
(no frozen epoch), one torch thread (``OMP_NUM_THREADS=1``); streaming with
``--workers`` loader workers. Every run starts with an empty crop-store cache, so "load s"
is decoding every crop once for both (into RAM, or into the store on disk).

Measured per run, on `facelab train` as a child process: peak RSS of the training process
(VmHWM), peak summed PSS of it and its loader workers (sampled every 0.2 s), CPU seconds of
the whole tree, wall time, load time (wall minus the epoch), and train images/s (the epoch's
own count: images / seconds of the training steps).

A second table reads 64-crop random batches three ways on the largest store: ``os.preadv``
(what the store does), the same shards memory-mapped (``np.load(mmap_mode="r")``), and
decoding the JPEG crops + resizing (what streaming the crop files would cost), each in a
child process over the whole store, with that child's peak RSS.

    .venv/bin/python bench/scale.py                       # table + bench/results/scale.json
    .venv/bin/python bench/scale.py --sizes 16500,66000 --stream-only 264000 --steps 60
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data")) / "celeba-mini"
WORK = REPO / "out" / "scale"
RESULTS = REPO / "bench" / "results" / "scale.json"
PY = sys.executable


def prepared(work: Path) -> Path:
    """celeba-mini through `facelab prepare` (once)."""
    out = work / "celeba-mini-crops"
    if not (out / "facelab_prepared.json").is_file():
        subprocess.run([PY, "-m", "facelab", "prepare", str(DATA), str(out)], check=True)
    return out


def scaled(src: Path, work: Path, n_train: int) -> Path:
    """A prepared CelebA-layout folder: src's training crops repeated to ``n_train`` rows."""
    out = work / f"celeba-x{n_train}"
    if (out / "facelab_prepared.json").is_file():
        return out
    part = dict(ln.split() for ln in (src / "list_eval_partition.txt").read_text().splitlines())
    ident = dict(ln.split() for ln in (src / "identity_CelebA.txt").read_text().splitlines())
    attr_lines = (src / "list_attr_celeba.txt").read_text().splitlines()
    header, attrs = attr_lines[1], {ln.split()[0]: ln.split()[1:] for ln in attr_lines[2:]}
    train = sorted(f for f, p in part.items() if p == "0")
    valid = sorted(f for f, p in part.items() if p == "1")
    rows = [(train[i % len(train)], "0") for i in range(n_train)] + [(f, "1") for f in valid]
    tmp = work / f".tmp-x{n_train}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img_align_celeba").mkdir(parents=True)
    names = []
    for k, (f, p) in enumerate(rows):
        name = f"{k:07d}.jpg"
        os.symlink(src / "img_align_celeba" / f, tmp / "img_align_celeba" / name)
        names.append((name, f, p))
    (tmp / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{header}\n" + "".join(f"{n} {' '.join(attrs[f])}\n" for n, f, _ in names))
    (tmp / "identity_CelebA.txt").write_text("".join(f"{n} {ident[f]}\n" for n, f, _ in names))
    (tmp / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, p in names))
    shutil.copy(src / "facelab_prepared.json", tmp / "facelab_prepared.json")
    tmp.rename(out)
    return out


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _kb(path: str, key: str) -> int:
    try:
        for ln in Path(path).read_text().splitlines():
            if ln.startswith(key):
                return int(ln.split()[1])
    except OSError:
        pass
    return 0


def run_train(data: Path, loader: str, steps: int, workers: int, out: Path, cache: Path) -> dict:
    """`facelab train` in a child; samples its memory every 0.2 s."""
    shutil.rmtree(cache / "stores", ignore_errors=True)
    name = f"{loader}-{data.name}"
    cmd = [PY, "-m", "facelab", "train", str(data), "--model", "efficientnet_lite0", "--size", "96",
           "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "64", "--max-batches", str(steps),
           "--loader", loader, "--loader-workers", str(workers), "--out", str(out), "--name", name,
           "--overwrite", "--no-tensorboard"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACELAB_CACHE": str(cache), "FACELAB_LOG": "WARNING"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    log = open(out.parent / f"{name}.log", "w")  # noqa: SIM115 - a pipe left unread would fill and stop the child
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    hwm = pss = 0
    while proc.poll() is None:
        hwm = max(hwm, _kb(f"/proc/{proc.pid}/status", "VmHWM"))
        pss = max(pss, sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in _tree(proc.pid)))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.close()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{Path(log.name).read_text()[-3000:]}")
    row = (out / name / "metrics.csv").read_text().splitlines()
    metrics = dict(zip(row[0].split(","), row[-1].split(",")))
    epoch_s = float(metrics["time"])
    return {"loader": loader, "train_rows": _rows(data), "steps": steps, "workers": workers if loader == "stream" else 0,
            "images_per_second": round(float(metrics["images_per_second"]), 1), "wall_s": round(wall, 1),
            "load_s": round(wall - epoch_s, 1), "epoch_s": round(epoch_s, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            "peak_rss_mb": round(hwm / 1024), "peak_pss_tree_mb": round(pss / 1024),
            "train_loss": float(metrics["train_loss"])}


def _rows(data: Path) -> int:
    return sum(1 for ln in (data / "list_eval_partition.txt").read_text().splitlines() if ln.endswith(" 0"))


READER = r"""
import os, resource, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from facelab import store as S
import csv
spec, how = S.read_spec({root!r}), {how!r}
with open(spec.root / "index.csv", newline="") as f:
    paths = [r["crop"] for r in csv.DictReader(f)] if how == "decode" else []
rng = np.random.default_rng(0)
order = rng.permutation(spec.rows)
limit = {limit}
t0 = time.perf_counter()
n = 0
if how == "pread":
    st = S.CropStore(spec)
    for i in range(0, min(limit, spec.rows), 64):
        st.read(order[i:i + 64]); n += len(order[i:i + 64])
elif how == "mmap":
    maps = [np.load(spec.shard_path(s), mmap_mode="r") for s in range(spec.shards)]
    for i in range(0, min(limit, spec.rows), 64):
        rows = np.sort(order[i:i + 64])
        np.stack([maps[r // spec.shard_rows][r % spec.shard_rows] for r in rows]); n += len(rows)
else:
    from facelab.train import load_crops
    for i in range(0, min(limit, len(paths)), 64):
        load_crops([paths[j % len(paths)] for j in order[i:i + 64]], spec.size, False); n += 64
secs = time.perf_counter() - t0
print(n / secs, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def read_paths(root: Path, read_limit: int, decode_limit: int) -> list[dict]:
    """Random 64-crop batches from the store: preadv, memory map, JPEG decode (child each)."""
    n = json.loads((root / "store.json").read_text())["rows"]
    rows = []
    for how, limit in (("pread", read_limit), ("mmap", read_limit), ("decode", decode_limit)):
        code = READER.format(repo=str(REPO), root=str(root), how=how, limit=limit)
        out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
        rows.append({"read": how, "crops": min(limit, n), "crops_per_second": round(float(out[0])),
                     "peak_rss_mb": int(out[1])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16500,66000", help="training rows, both loaders")
    ap.add_argument("--stream-only", default="", help="training rows, streaming only (too big for RAM here)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--loaders", default="memory,stream", help="which loaders to run at --sizes")
    ap.add_argument("--keep", action="store_true", help="keep the runs of the other loaders already in "
                    "bench/results/scale.json (rerun one loader after a change to it)")
    args = ap.parse_args()
    src = prepared(args.work)
    loaders = args.loaders.split(",")
    runs = [r for r in json.loads(RESULTS.read_text())["runs"] if r["loader"] not in loaders] if args.keep else []
    plan = [(int(n), loader) for n in args.sizes.split(",") if n for loader in loaders]
    plan += [(int(n), "stream") for n in args.stream_only.split(",") if n]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "data": "celeba-mini's 660 train crops repeated (symlinks), 120 valid", "steps": args.steps,
              "runs": runs, "reads": [], "command": " ".join(sys.argv)}
    for n, loader in plan:
        data = scaled(src, args.work, n)
        runs.append(run_train(data, loader, args.steps, args.workers, args.work / "runs", args.work / "cache"))
        print(json.dumps(runs[-1]), flush=True)
        _save(result)  # a run at a time: an interrupted benchmark keeps what it measured
    result["reads"] = read_paths(_store_root(args.work / "cache"), read_limit=66000, decode_limit=6400)
    _save(result)
    _print(result)


def _save(result: dict) -> None:
    from facelab._io import write_json

    result["load_average"] = os.getloadavg()
    write_json(RESULTS, result)


def _store_root(cache: Path) -> Path:
    """The training store of the last streamed run (the largest store in the cache)."""
    stores = [json.loads(p.read_text()) | {"root": p.parent} for p in (cache / "stores").glob("*/store.json")]
    return max(stores, key=lambda s: s["rows"])["root"]


def _print(result: dict) -> None:
    cols = ("train_rows", "loader", "workers", "images_per_second", "peak_rss_mb", "peak_pss_tree_mb", "load_s",
            "epoch_s", "cpu_s", "wall_s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in result["runs"]:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print()
    print("| read | crops | crops/s | peak RSS MB |")
    print("|---|---|---|---|")
    for r in result["reads"]:
        print(f"| {r['read']} | {r['crops']} | {r['crops_per_second']} | {r['peak_rss_mb']} |")
    print(f"load average {result['load_average']}")


if __name__ == "__main__":
    main()
