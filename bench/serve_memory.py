"""Does a `facelab serve` process grow as it works? Its resident memory (VmRSS) after a
warm-up and after N more predictions on real uncropped photos (every one a face
detection), one client, `--backend torch`. Prints a table, writes JSON.

    .venv/bin/python bench/serve_memory.py --run runs/bench-serve            # make bench trains it
    .venv/bin/python bench/serve_memory.py --run runs/bench-serve --requests 2000 --repeat 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import REPO, free_port, photo_bytes, start_server  # noqa: E402  (bench/serve.py)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def one_server(run: str, photos: list[bytes], requests: int, warmup: int) -> dict:
    port = free_port()
    proc = start_server(run, port, ["--backend", "torch"])
    url = f"http://127.0.0.1:{port}/api/predict"
    try:
        with httpx.Client(timeout=60) as client:
            def post(i: int) -> None:
                r = client.post(url, files={"image": ("photo.jpg", photos[i % len(photos)], "image/jpeg")})
                r.raise_for_status()

            for i in range(warmup):
                post(i)
            before, t0 = rss_mb(proc.pid), time.perf_counter()
            for i in range(requests):
                post(i)
            seconds, after = time.perf_counter() - t0, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"rss_before_mb": before, "rss_after_mb": after, "kib_per_request": (after - before) * 1024 / requests,
            "requests_per_s": requests / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "bench-serve"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_memory.json"))
    args = ap.parse_args()
    photos = photo_bytes(40)
    load_before = os.getloadavg()
    runs = [one_server(args.run, photos, args.requests, args.warmup) for _ in range(args.repeat)]
    growth = [r["kib_per_request"] for r in runs]
    result = {"run": args.run, "photos": len(photos), "requests": args.requests, "warmup": args.warmup, "runs": runs,
              "kib_per_request_median": statistics.median(growth), "load_average_before": load_before,
              "load_average": os.getloadavg(), "machine": {"cpu_count": os.cpu_count(),
                                                           "python": platform.python_version()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"| server | RSS after {args.warmup} (MB) | after {args.requests} more (MB) | KiB per request | requests/s |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(f"| {i} | {r['rss_before_mb']:.0f} | {r['rss_after_mb']:.0f} | {r['kib_per_request']:.1f} | "
              f"{r['requests_per_s']:.0f} |")
    print(f"load average {load_before[0]:.2f} before, {result['load_average'][0]:.2f} after; wrote {args.out}")


if __name__ == "__main__":
    main()
