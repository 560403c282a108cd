"""Benchmark `facelab train` as the photos grow: peak memory and images/s, crops streamed
from a crop store (``--loader stream``) vs decoded into memory (``--loader memory``).

The data: a CelebA-layout folder (``--src``; default celeba-mini, 900 photos) prepared once
(``facelab prepare``: aligned 224 px JPEG crops, the official partition), then its TRAINING
crops taken in order and REPEATED cyclically to N training rows (symbolic links, so N real
files for facelab; past the real count the pixels repeat), the valid crops once, no test.
Sizes are the number of training rows. ``--src data/celeba-16k`` (bench/make_celeba16k.py:
15,723 real CelebA photos) is the CelebA-sized run of issue #15. Same data, model and steps
for both loaders: efficientnet_lite0 at 96 px, 40 attributes, batch 64, one epoch of
``--steps`` steps (no frozen epoch), one torch thread (``OMP_NUM_THREADS=1``, what one slot of
the shared machine's ``/tmp/cpu`` wrapper gives); streaming with ``--workers`` loader workers.
Every run starts with an empty crop-store cache (``--warm-store``: stores of earlier runs are
kept, synced to disk), so "load s" is decoding every crop once for both (into RAM, or into the
store on disk).

Measured per run, on `facelab train` as a child process: peak RSS of the training process
(VmHWM), peak summed PSS of it and its loader workers (sampled every 0.2 s), CPU seconds of
the whole tree, its block reads and writes (disk, not page cache), wall time, load time
(wall minus the epoch), train images/s (the epoch's own count: images / seconds of the
training steps), and the 1/5/15-minute load average before and after (the machine is
shared: a run beside a busy neighbour is slower).
``--rounds R`` repeats the ``--sizes`` runs R times, the loaders' order alternating, and the
summary gives each size's median and range of images/s per loader and of the stream/memory
ratio (run pairs of the same round), and peak RSS of the largest streamed size over the
smallest; ``--append`` adds runs (another ``--workers``, say) to an earlier ``--results``.
``--ab N`` then times the two batch paths inside ONE process, batches alternating, over the
largest store's first N crops: what the batch path itself costs, without the machine's load
drift between separate runs.

A second table reads 64-crop random batches three ways on the largest store: ``os.preadv``
(what the store does), the same shards memory-mapped (``np.load(mmap_mode="r")``), and
decoding the JPEG crops + resizing (what streaming the crop files would cost), each in a
child process over the whole store, with that child's peak RSS.

    .venv/bin/python bench/scale.py                       # table + bench/results/scale.json
    .venv/bin/python bench/scale.py --sizes 16500,66000 --stream-only 264000 --steps 60
    .venv/bin/python bench/scale.py --src data/celeba-16k --sizes 16000 --rounds 3 \
        --more 64000 --stream-only 256000 --results bench/results/scale-celeba16k.json
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


def prepared(src: Path, work: Path) -> Path:
    """``src`` through `facelab prepare` (once; one worker, as one CPU slot)."""
    out = work / f"{src.name}-crops"
    if not (out / "facelab_prepared.json").is_file():
        subprocess.run([PY, "-m", "facelab", "prepare", str(src), str(out), "--workers", "1", "--no-html"],
                       check=True)
    return out


def _splits(src: Path) -> dict[str, int]:
    """Crops per official partition (0 train, 1 valid, 2 test) of a prepared folder."""
    counts: dict[str, int] = {}
    for ln in (src / "list_eval_partition.txt").read_text().splitlines():
        if ln.split():
            counts[ln.split()[1]] = counts.get(ln.split()[1], 0) + 1
    return counts


def scaled(src: Path, work: Path, n_train: int) -> Path:
    """A prepared CelebA-layout folder: src's training crops repeated to ``n_train`` rows."""
    out = work / f"{src.name.removesuffix('-crops')}-x{n_train}"
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


def run_train(data: Path, loader: str, steps: int, workers: int, out: Path, cache: Path, warm: bool = False) -> dict:
    """`facelab train` in a child; samples its memory every 0.2 s. ``warm``: keep the crop
    stores already built (and written back to disk: ``sync`` first) instead of starting empty."""
    if warm:
        subprocess.run(["sync"], check=True)
    else:
        shutil.rmtree(cache / "stores", ignore_errors=True)
    prebuilt = any(json.loads(p.read_text())["rows"] == _rows(data) for p in (cache / "stores").glob("*/store.json"))
    name = f"{loader}-{data.name}"
    cmd = [PY, "-m", "facelab", "train", str(data), "--model", "efficientnet_lite0", "--size", "96",
           "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "64", "--max-batches", str(steps),
           "--loader", loader, "--loader-workers", str(workers), "--out", str(out), "--name", name,
           "--overwrite", "--no-tensorboard"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACELAB_CACHE": str(cache), "FACELAB_LOG": "WARNING"}
    load_before = _load()
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
            "store_prebuilt": prebuilt if loader == "stream" else None,
            "disk_read_mb": round((after.ru_inblock - before.ru_inblock) * 512 / 2**20),
            "disk_write_mb": round((after.ru_oublock - before.ru_oublock) * 512 / 2**20),
            "train_loss": float(metrics["train_loss"]), "load_before": load_before, "load_after": _load()}


def _load() -> list[float]:
    """`uptime`'s 1/5/15-minute load average."""
    return [round(x, 2) for x in os.getloadavg()]


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


AB = r"""
import csv, sys, time
import numpy as np, torch
sys.path.insert(0, {repo!r})
from facelab import store as S
from facelab.augment import augment_batch, get_preset
from facelab.bundle import InputSpec
from facelab.models import create_model, get_spec
from facelab.train import load_crops
torch.set_num_threads(1)
spec = S.read_spec({root!r})
with open(spec.root / "index.csv", newline="") as f:
    paths = [r["crop"] for r in csv.DictReader(f)][:{rows}]
mem, st = torch.from_numpy(load_crops(paths, spec.size, False)), S.CropStore(spec)
m = get_spec("efficientnet_lite0")
inp, aug = InputSpec(spec.size, m.mean, m.std), get_preset("fastai")
model = create_model("efficientnet_lite0", 40).to(memory_format=torch.channels_last).train()
opt, loss_fn = torch.optim.AdamW(model.parameters(), 1e-3), torch.nn.BCEWithLogitsLoss()
def x01(u8): return u8.permute(0, 3, 1, 2).float().div_(255)
paths_ = {{"memory": lambda idx: mem[idx], "stream": lambda idx: torch.from_numpy(st.read(idx.numpy()))}}
t = {{k: ([], []) for k in paths_}}
for k, idx in enumerate(torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)).split(64)):
    how = ("memory", "stream")[(k + k // 2) % 2]  # ABBA: load drift hits both alike
    t0 = time.perf_counter()
    x = inp.normalise(augment_batch(x01(paths_[how](idx)), aug, torch.Generator().manual_seed(k)))
    x = x.contiguous(memory_format=torch.channels_last)
    t1 = time.perf_counter()
    loss = loss_fn(model(x), torch.rand(len(idx), 40).round())
    opt.zero_grad(); loss.backward(); opt.step()
    if k >= 2:
        t[how][0].append(t1 - t0); t[how][1].append(time.perf_counter() - t1)
for how, (prep, step) in t.items():
    print(how, len(prep), np.median(prep), np.median(step))
"""


def ab_batches(root: Path, rows: int) -> list[dict]:
    """The two batch paths in ONE process, batches alternating ABBA over the store's first
    ``rows`` crops, same model and steps: the in-memory path (decoded crops sliced) against
    the streamed one in process (store rows read); median batch preparation and train step.
    A gap between the loaders that this does not show lies outside the batch path."""
    code = AB.format(repo=str(REPO), root=str(root), rows=rows)
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split("\n")
    rows_ = []
    for line in filter(None, out):
        how, n, prep, step = line.split()
        rows_.append({"path": how, "batches": int(n), "prep_ms": round(1000 * float(prep), 1),
                      "step_ms": round(1000 * float(step)), "images_per_second": round(64 / (float(prep) + float(step)), 1)})
    return rows_


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
    ap.add_argument("--src", type=Path, default=DATA, help="CelebA-layout photo folder [shared celeba-mini]")
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON written [bench/results/scale.json]")
    ap.add_argument("--sizes", default="16500,66000", help="training rows, both loaders, every round")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the --sizes runs, loaders' order alternating")
    ap.add_argument("--more", default="", help="training rows, both loaders, once, after the rounds")
    ap.add_argument("--stream-only", default="", help="training rows, streaming only (too big for RAM here)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--loaders", default="memory,stream", help="which loaders to run at --sizes and --more")
    ap.add_argument("--keep", action="store_true", help="keep the runs of the other loaders already in "
                    "--results (rerun one loader after a change to it)")
    ap.add_argument("--append", action="store_true", help="add these runs to those in --results (e.g. another "
                    "--workers), rounds numbered on")
    ap.add_argument("--warm-store", action="store_true", help="reuse crop stores built by earlier runs "
                    "(synced to disk) instead of emptying the cache before each run")
    ap.add_argument("--no-reads", action="store_true", help="skip the read-path table")
    ap.add_argument("--ab", type=int, default=0, help="also the in-process A/B of the two batch paths over "
                    "this many crops of the largest store (0: no)")
    args = ap.parse_args()
    src = prepared(args.src.resolve(), args.work)
    loaders = args.loaders.split(",")
    old = json.loads(args.results.read_text()) if args.keep or args.append else {"runs": []}
    runs = old["runs"] if args.append else [r for r in old["runs"] if r["loader"] not in loaders]
    first = 1 + max((r["round"] for r in runs if r.get("round") is not None), default=-1) if args.append else 0
    plan = _plan(args, loaders, first)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "threads": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (bench child: 1), "
                         f"/tmp/cpu slot {os.environ.get('FACELAB_CPU_SLOT', 'none')}",
              "data": _describe(args.src.resolve(), src), "steps": args.steps,
              "runs": runs, "reads": [], "command": " ".join(sys.argv)}
    if args.append:
        result = old | {"runs": runs, "command": [*_listed(old.get("command")), result["command"]],
                        "threads": result["threads"]}
    for n, loader, rnd in plan:
        data = scaled(src, args.work, n)
        runs.append({"round": rnd} | run_train(data, loader, args.steps, args.workers, args.work / "runs",
                                               args.work / "cache", args.warm_store))
        print(json.dumps(runs[-1]), flush=True)
        result["summary"] = _summary(runs)
        _save(result, args.results)  # a run at a time: an interrupted benchmark keeps what it measured
    if not args.no_reads and not args.append:
        result["reads"] = read_paths(_store_root(args.work / "cache"), read_limit=66000, decode_limit=6400)
    if args.ab:
        result["ab"] = ab_batches(_store_root(args.work / "cache"), args.ab)
    _save(result, args.results)
    _print(result)


def _listed(x: str | list[str] | None) -> list[str]:
    return [] if x is None else [x] if isinstance(x, str) else x


def _plan(args: argparse.Namespace, loaders: list[str], first: int) -> list[tuple[int, str, int | None]]:
    """(rows, loader, round): the rounds first, each loader order the reverse of the last."""
    sizes = [int(n) for n in args.sizes.split(",") if n]
    plan: list[tuple[int, str, int | None]] = [(n, loader, first + r) for r in range(args.rounds) for n in sizes
                                               for loader in (loaders if r % 2 == 0 else loaders[::-1])]
    plan += [(int(n), loader, None) for n in args.more.split(",") if n for loader in loaders]
    return plan + [(int(n), "stream", None) for n in args.stream_only.split(",") if n]


def _describe(photos: Path, crops: Path) -> str:
    split = _splits(crops)
    given = _splits(photos)
    return (f"{photos.name} ({sum(given.values())} photos) through `facelab prepare`: {sum(split.values())} crops "
            f"({split.get('0', 0)} train / {split.get('1', 0)} valid / {split.get('2', 0)} test); each size's "
            f"training rows are the {split.get('0', 0)} real training crops taken in order and REPEATED "
            f"cyclically (symlinks) up to that size, so beyond {split.get('0', 0)} rows the pixels repeat; "
            f"the {split.get('1', 0)} valid crops once, no test")


def _how(run: dict) -> str:
    """``memory``, or ``stream_wK`` for streaming with K loader workers (``_warm``: from a
    store built by an earlier run)."""
    if run["loader"] == "memory":
        return "memory"
    return f"{run['loader']}_w{run['workers']}" + ("_warm" if run.get("store_prebuilt") else "")


def _summary(runs: list[dict]) -> dict:
    """Per size: images/s of each loader (median, range); streamed/memory images/s ratio
    over the runs of one round (median, range); peak RSS of the largest streamed size over
    the smallest (medians), per number of loader workers."""
    from statistics import median

    out: dict = {"by_size": {}}
    for n in sorted({r["train_rows"] for r in runs}):
        at = [r for r in runs if r["train_rows"] == n]
        entry: dict = {}
        for loader in sorted({_how(r) for r in at}):
            ips = [r["images_per_second"] for r in at if _how(r) == loader]
            rss = [r["peak_rss_mb"] for r in at if _how(r) == loader]
            entry[loader] = {"runs": len(ips), "images_per_second_median": median(ips), "images_per_second_range":
                             [min(ips), max(ips)], "peak_rss_mb_median": median(rss), "peak_rss_mb_range": [min(rss), max(rss)]}
        pairs: dict[int, dict[str, float]] = {}
        for r in at:
            if r.get("round") is not None:
                pairs.setdefault(r["round"], {})[_how(r)] = r["images_per_second"]
        for how in sorted({k for p in pairs.values() for k in p} - {"memory"}):
            ratios = [round(p[how] / p["memory"], 3) for p in pairs.values() if how in p and "memory" in p]
            if ratios:
                entry[f"{how}_over_memory_images_per_second"] = {"pairs": ratios, "median": median(ratios),
                                                                 "range": [min(ratios), max(ratios)]}
        out["by_size"][str(n)] = entry
    for how in sorted({_how(r) for r in runs} - {"memory"}):
        medians = {int(n): e[how]["peak_rss_mb_median"] for n, e in out["by_size"].items() if how in e}
        if len(medians) > 1:
            lo, hi = min(medians), max(medians)
            out[f"{how}_peak_rss_{hi}_over_{lo}"] = round(medians[hi] / medians[lo], 3)
    return out


def _save(result: dict, path: Path) -> None:
    from facelab._io import write_json

    result["load_average"] = os.getloadavg()
    write_json(path, result)


def _store_root(cache: Path) -> Path:
    """The training store of the last streamed run (the largest store in the cache)."""
    stores = [json.loads(p.read_text()) | {"root": p.parent} for p in (cache / "stores").glob("*/store.json")]
    return max(stores, key=lambda s: s["rows"])["root"]


def _print(result: dict) -> None:
    cols = ("train_rows", "loader", "round", "workers", "images_per_second", "peak_rss_mb", "peak_pss_tree_mb",
            "load_s", "epoch_s", "cpu_s", "wall_s", "load_before", "load_after")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in result["runs"]:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print()
    if result["reads"]:
        print("| read | crops | crops/s | peak RSS MB |")
        print("|---|---|---|---|")
        for r in result["reads"]:
            print(f"| {r['read']} | {r['crops']} | {r['crops_per_second']} | {r['peak_rss_mb']} |")
    for r in result.get("ab", []):
        print(f"A/B {r['path']}: {r['batches']} batches, prep {r['prep_ms']} ms, step {r['step_ms']} ms, "
              f"{r['images_per_second']} images/s")
    print(json.dumps(result.get("summary", {}), indent=1))
    print(f"load average {result['load_average']}")


if __name__ == "__main__":
    main()
