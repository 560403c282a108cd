"""Benchmark `facelab prepare --shard K/N` (the preparation half of the scale benchmark):
one single-threaded process over every photo vs N single-threaded shard processes at
once, each writing its slice into one shared crop cache, then the merge (the same
command without --shard, every photo read from the cache). Each repeat starts with empty
caches; the merged output is checked byte for byte against the single process's.

    .venv/bin/python bench/prepare_shards.py            # table + bench/results/prepare_shards.json
    .venv/bin/python bench/prepare_shards.py --src ../shared/data/celeba-mini --shards 2 --repeat 3
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "facelab", "prepare", *args, "--workers", "1", "--threads", "--no-html"]


def _run_all(cmds: list[list[str]]) -> tuple[float, float]:
    """Start every command at once; (wall seconds until the last one ends, the largest peak
    RSS of one process in MB)."""
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in cmds]
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=e, text=True) for c, e in zip(cmds, errs)]
        peak = 0.0
        for p, err in zip(procs, errs):
            _, status, usage = os.wait4(p.pid, 0)  # like wait(), plus the process's peak RSS
            p.returncode = os.waitstatus_to_exitcode(status)
            peak = max(peak, usage.ru_maxrss / 1024)
            if p.returncode:
                err.seek(0)
                raise RuntimeError(f"{' '.join(map(str, p.args))} failed:\n{err.read()[-2000:]}")
    return time.perf_counter() - t0, peak


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and ".facelab_report" not in p.parts and p.name != "facelab_prepared.json":
            h.update(str(p.relative_to(out)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def one_repeat(src: Path, shards: int, work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    single, single_mb = _run_all([_cli(str(src), str(work / "unused"), "--cache-dir", str(work / "c1"),
                                       "--shard", "0/1")])
    sharded, shard_mb = _run_all([_cli(str(src), str(work / "unused"), "--cache-dir", str(work / "cN"),
                                       "--shard", f"{k}/{shards}") for k in range(shards)])
    merge, merge_mb = _run_all([_cli(str(src), str(work / "merged"), "--cache-dir", str(work / "cN"))])
    _run_all([_cli(str(src), str(work / "single"), "--cache-dir", str(work / "c1"))])
    return {"single_s": single, "sharded_s": sharded, "merge_s": merge, "single_peak_mb": single_mb,
            "shard_peak_mb": shard_mb, "merge_peak_mb": merge_mb,
            "identical": _digest(work / "merged") == _digest(work / "single")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=DATA / "celeba-mini")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "prepare_shards.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from facelab.data import load_source

    photos = len(load_source(args.src))
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="facelab-bench-shards-"))
    try:
        runs = [one_repeat(args.src, args.shards, work / "w") for _ in range(args.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedups = [r["single_s"] / r["sharded_s"] for r in runs]
    result = {"src": str(args.src), "photos": photos, "shards": args.shards, "runs": runs,
              "speedup_median": statistics.median(speedups), "speedup_range": [min(speedups), max(speedups)],
              "load_average": os.getloadavg(), "load_average_before": load_before,
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
              "note": "wall times include each process's start (Python + facelab imports, ~1-2 s)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| {photos} photos | 1 process (s) | {args.shards} shard processes (s) | speed-up | merge (s) "
          "| peak RSS MB (1 / shard / merge) | identical |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(f"| repeat {i} | {r['single_s']:.1f} ({photos / r['single_s']:.0f} photos/s) | {r['sharded_s']:.1f} "
              f"({photos / r['sharded_s']:.0f} photos/s) | {r['single_s'] / r['sharded_s']:.2f}x | {r['merge_s']:.1f} | "
              f"{r['single_peak_mb']:.0f} / {r['shard_peak_mb']:.0f} / {r['merge_peak_mb']:.0f} | {r['identical']} |")
    print(f"speed-up median {result['speedup_median']:.2f}x, range {min(speedups):.2f}-{max(speedups):.2f}; "
          f"load average {load_before[0]:.2f} before, {result['load_average'][0]:.2f} after; wrote {args.out}")


if __name__ == "__main__":
    main()
