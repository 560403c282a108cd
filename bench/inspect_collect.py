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

``--imagehash`` instead compares facelab._phash with the imagehash package (the reason
_phash.py stays: see its docstring).

    .venv/bin/python bench/inspect_collect.py   # table + bench/results/inspect.json
    .venv/bin/python bench/inspect_collect.py --imagehash
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
from typing import Any

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


def _imagehash_hashes(rgb: np.ndarray) -> tuple[int, int]:
    """phash and dhash of the imagehash package, as facelab._phash's 64-bit ints."""
    import imagehash

    from facelab._phash import _bits_to_int

    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]) if rgb.ndim == 3 else rgb)
    return _bits_to_int(imagehash.phash(img).hash), _bits_to_int(imagehash.dhash(img).hash)


def _imagehash_fingerprint(rgb: np.ndarray) -> Any:
    """facelab._phash's Fingerprint with the two hashes computed by the imagehash package."""
    from facelab._phash import THUMB, Fingerprint, _grey

    return Fingerprint(*_imagehash_hashes(rgb), _grey(rgb, (THUMB, THUMB)).astype(np.uint8))


def bench_imagehash() -> list[dict]:
    """facelab._phash against the imagehash package (same rule: hash <= 10, then the thumbnail
    check): pairs among the originals, copies matched per edit, milliseconds per photo."""
    from facelab._phash import dhash, phash

    celeba, orl = load_source(DATA / "celeba-mini"), load_source(DATA / "orl-faces")
    originals = [Image.open(p).convert("RGB") for p in celeba.paths]
    sets = {"celeba-mini": [np.asarray(im) for im in originals],
            "orl-faces": [np.asarray(Image.open(p).convert("RGB")) for p in orl.paths]}
    ours = {"hashes": lambda r: (phash(r), dhash(r)), "fingerprint": fingerprint}
    theirs = {"hashes": _imagehash_hashes, "fingerprint": _imagehash_fingerprint}
    picked = list(range(0, 900, 3))
    rows = []
    for name, impl in (("facelab._phash", ours), ("imagehash", theirs)):
        for set_name, rgbs in sets.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for r in rgbs:
                    impl["hashes"](r)
                best = min(best, time.perf_counter() - t0)
            fps = [impl["fingerprint"](r) for r in rgbs]
            rows.append({"hashes": name, "set": set_name, "ms_per_photo": 1e3 * best / len(rgbs),
                         "pairs_among_originals": sorted(_pairs(fps, True))})
            if set_name == "celeba-mini":
                for edit_name, edit in EDITS.items():
                    copies = [impl["fingerprint"](np.asarray(edit(originals[i]))) for i in picked]
                    found = _pairs([fps[i] for i in picked] + copies, True)
                    rows.append({"hashes": name, "set": set_name, "edit": edit_name,
                                 "matched": sum((k, k + len(picked)) in found for k in range(len(picked)))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "inspect.json"))
    parser.add_argument("--imagehash", action="store_true",
                        help="only compare facelab._phash with the imagehash package (pip install imagehash)")
    args = parser.parse_args()
    if args.imagehash:
        for r in bench_imagehash():
            print(r)
        return
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
