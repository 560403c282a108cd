"""Benchmark inspect and collect: near-duplicate detection quality, report speed, download pool.

One run measures:

* near-duplicate detection (facelab._phash): for 300 celeba-mini photos a modified copy is
  made with each edit below; recall = copies matched to their original. False pairs =
  pairs found among ORL's 400 distinct photos (consecutive shots of a person sitting
  still: the hard case), and pairs found among celeba-mini's 900 originals (CelebA's own
  duplicates; listed). Both with the default rule (hash distance <= 10 AND thumbnail
  confirmation) and with the hash alone, to show what the confirmation buys;
* ``facelab.inspect`` wall time and images/s on celeba-mini (default checks) and ORL;
* ``facelab.collect`` URLs/s from a local server that answers after 50 ms, 1 vs 8 workers.

    .venv/bin/python bench/inspect_collect.py   # table + bench/results/inspect.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))

from facelab._phash import fingerprint, near_pairs  # noqa: E402
from facelab.data import load_source  # noqa: E402


def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return Image.open(buf).convert("RGB")


EDITS = {
    "JPEG q40": lambda im: _jpeg(im, 40),
    "resize 50% + JPEG q75": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2)), 75),
    "brightness +8%": lambda im: Image.fromarray(np.clip(np.asarray(im) * 1.08, 0, 255).astype(np.uint8)),
    "PNG re-save": lambda im: Image.open(io.BytesIO(_png(im))).convert("RGB"),
    "crop 3% border": lambda im: im.crop((int(im.width * .03), int(im.height * .03),
                                          int(im.width * .97), int(im.height * .97))),
    "mirror (not a copy)": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _pairs(fps: list, confirm: bool) -> set[tuple[int, int]]:
    return {(i, j) for i, j, _ in near_pairs(fps, diff_threshold=1e9 if not confirm else 0.3)}


def bench_duplicates() -> list[dict]:
    celeba = load_source(DATA / "celeba-mini")
    orl = load_source(DATA / "orl-faces")
    originals = [Image.open(p).convert("RGB") for p in celeba.paths]
    orig_fps = [fingerprint(np.asarray(im)) for im in originals]
    orl_fps = [fingerprint(np.asarray(Image.open(p).convert("RGB"))) for p in orl.paths]
    rows = []
    picked = list(range(0, 900, 3))
    for confirm in (True, False):
        rule = "hash <= 10 + thumbnail" if confirm else "hash <= 10 only"
        for name, edit in EDITS.items():
            copies = [fingerprint(np.asarray(edit(originals[i]))) for i in picked]
            found = _pairs([orig_fps[i] for i in picked] + copies, confirm)
            n = len(picked)
            hit = sum((k, k + n) in found for k in range(n))
            rows.append({"rule": rule, "set": "celeba-mini", "edit": name, "copies": n, "matched": hit,
                         "recall": hit / n})
        orl_false = _pairs(orl_fps, confirm)
        own = _pairs(orig_fps, confirm)
        rows.append({"rule": rule, "set": "orl-faces", "edit": "distinct photos", "copies": 0,
                     "matched": len(orl_false), "recall": float("nan")})
        rows.append({"rule": rule, "set": "celeba-mini", "edit": "originals (CelebA's own duplicates)",
                     "copies": 0, "matched": len(own), "recall": float("nan"),
                     "pairs": sorted(f"{celeba.paths[i].name}={celeba.paths[j].name}" for i, j in own)[:20]})
    return rows


def bench_inspect() -> list[dict]:
    from facelab.inspect import InspectConfig, inspect

    rows = []
    for name in ("celeba-mini", "orl-faces"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = inspect(DATA / name, tmp, InspectConfig(), progress=False)
            dt = time.perf_counter() - t0
        n = report.summary["photos"]
        rows.append({"set": name, "photos": n, "seconds": dt, "images_per_s": n / dt,
                     "findings": sorted(report.checks())})
    return rows


def bench_collect(n_urls: int = 120, latency: float = 0.05) -> list[dict]:
    from facelab.collect import collect

    files = sorted((DATA / "celeba-mini" / "img_align_celeba").glob("*.jpg"))[:n_urls]
    blobs = {f"/{i}.jpg": f.read_bytes() for i, f in enumerate(files)}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency)
            body = blobs[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    rows = []
    try:
        for workers in (1, 8):
            with tempfile.TemporaryDirectory() as tmp:
                urls = Path(tmp) / "urls.txt"
                urls.write_text("".join(f"{base}{p}\n" for p in blobs))
                t0 = time.perf_counter()
                report = collect(urls, Path(tmp) / "out", progress=False, workers=workers)
                dt = time.perf_counter() - t0
            rows.append({"workers": workers, "urls": n_urls, "seconds": dt, "urls_per_s": n_urls / dt,
                         "counts": report.counts})
    finally:
        httpd.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "inspect.json"))
    args = parser.parse_args()
    dup, ins, col = bench_duplicates(), bench_inspect(), bench_collect()
    print("\nnear-duplicate detection (300 celeba-mini photos per edit)")
    print(f"{'rule':<24} {'set':<12} {'edit':<38} {'matched':>8} {'recall':>7}")
    for r in dup:
        rec = "" if np.isnan(r["recall"]) else f"{r['recall']:.3f}"
        print(f"{r['rule']:<24} {r['set']:<12} {r['edit']:<38} {r['matched']:>8} {rec:>7}")
    print("\nfacelab.inspect (default checks)")
    for r in ins:
        print(f"{r['set']:<12} {r['photos']:>5} photos {r['seconds']:6.1f} s {r['images_per_s']:7.1f} img/s  "
              f"findings: {', '.join(r['findings']) or '-'}")
    print("\nfacelab.collect (local server, 50 ms per response)")
    for r in col:
        print(f"workers {r['workers']:>2}: {r['urls']} URLs in {r['seconds']:5.2f} s = {r['urls_per_s']:6.1f} URLs/s "
              f"{r['counts']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"duplicates": dup, "inspect": ins, "collect": col}, indent=2,
                                          default=str))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
