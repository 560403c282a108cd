"""Benchmark inference and serving: end-to-end latency per image, service throughput.

1. Single-image end-to-end latency (decode + detect + align + classify, one photo at a
   time, in process) with ONNX Runtime and with PyTorch, on celeba-mini's 178x218 photos.
2. ``facelab serve RUN`` started as a real uvicorn process on 127.0.0.1 (loopback only);
   1, 4 and 16 concurrent closed-loop clients POST photos for a bounded time and number
   of requests each: throughput (images/s), p50/p99 latency, errors, mean batch. Each
   client keeps one keep-alive connection and sends pre-encoded multipart requests (the
   load generator must stay cheap: it shares the CPU with the server); every answer is
   checked (status 200 and a JSON ``faces`` list), anything else counts as an error.
   The service is measured with one server process (the default) and with ``--workers 2``.

Clients and server share the same (2-core, shared) machine, so the service numbers
include the clients' own CPU use.

    .venv/bin/python bench/serve.py --run runs/DEFAULT [runs/OTHER ...]   # tables + bench/results/serve.json
    .venv/bin/python bench/serve.py --run runs/NAME --seconds 5 --clients 16 --workers 1 --serve-args "--threads 4"

`make bench` trains runs/bench-serve (the default model, lenet5) and runs/bench-serve-lite0
(efficientnet_lite0 at 128 px) on celeba-mini and measures both.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# One OpenMP thread per operation, as `facelab serve` runs (set before any library loads it).
os.environ["OMP_NUM_THREADS"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data"))
PHOTOS = DATA / "celeba-mini" / "img_align_celeba"


def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def photo_bytes(n: int) -> list[bytes]:
    paths = sorted(PHOTOS.glob("*.jpg"))[:n]
    if not paths:
        sys.exit(f"no photos in {PHOTOS}: the benchmark needs ../shared/data")
    return [p.read_bytes() for p in paths]


# --------------------------------------------------------------------------- 1. in process

def e2e_latency(run: str, backend: str, photos: list[bytes], seconds: float, max_images: int,
                all_faces: bool) -> dict:
    from facelab.images import decode_image
    from facelab.predict import backend_of, load_predictor, predict_rgb

    predictor = load_predictor(run, backend)
    for data in photos[:5]:  # warm-up
        predict_rgb(predictor, decode_image(data), all_faces)
    ms, faces, t_end = [], 0, time.perf_counter() + seconds
    for i in range(max_images):
        if time.perf_counter() > t_end:
            break
        t0 = time.perf_counter()
        faces += len(predict_rgb(predictor, decode_image(photos[i % len(photos)]), all_faces))
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"backend": backend_of(predictor), "images": len(ms), "faces": faces, **percentiles(ms)}


# --------------------------------------------------------------------------- 2. the service

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, extra: list[str]) -> subprocess.Popen:
    """``facelab serve RUN`` on 127.0.0.1:port, its log in a temporary file (a pipe nobody
    reads would block the server once it fills, e.g. with 503 warnings)."""
    import tempfile

    import httpx

    cmd = [sys.executable, "-m", "facelab", "serve", run, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *extra]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("server did not start within 180 s")


def multipart_request(port: int, path: str, photo: bytes) -> bytes:
    """One complete, pre-encoded HTTP/1.1 keep-alive request: a multipart form with the
    photo in field ``image``, as a browser or ``curl -F`` sends it."""
    boundary = "facelabbench7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status code and body of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def answered_faces(body: bytes) -> bool:
    """The body is a JSON object with a ``faces`` list (a real prediction answer)."""
    try:
        return isinstance(json.loads(body).get("faces"), list)
    except (ValueError, AttributeError):
        return False


async def load_level(port: int, path: str, photos: list[bytes], clients: int, seconds: float,
                     max_requests: int) -> dict:
    """``clients`` closed-loop clients, each on its own keep-alive connection, POST
    pre-encoded multipart requests for ``seconds``; every answer must be a 200 with a
    JSON ``faces`` list, anything else (or a dropped connection) counts as an error."""
    requests = [multipart_request(port, path, p) for p in photos]
    ms: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    t_end = time.perf_counter() + seconds

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def client(k: int) -> None:
        nonlocal sent
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        i = k
        while time.perf_counter() < t_end and sent < max_requests:
            sent += 1
            request = requests[i % len(requests)]
            i += clients
            t0 = time.perf_counter()
            try:
                conn = conn or await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(request)
                status, body = await asyncio.wait_for(read_response(conn[0]), 60)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                error(type(exc).__name__)  # the request failed; the next one opens a new connection
                if conn:
                    conn[1].close()
                conn = None
                continue
            if status != 200:
                error(str(status))
            elif not answered_faces(body):
                error("bad_answer")
            else:
                ms.append((time.perf_counter() - t0) * 1e3)
        if conn:
            conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "requests": len(ms), "errors": errors, "seconds": round(elapsed, 2),
            "images_per_s": round(len(ms) / elapsed, 1), **percentiles(ms)}


def service(run: str, photos: list[bytes], levels: list[int], seconds: float, max_requests: int,
            extra: list[str]) -> tuple[list[dict], dict]:
    import httpx

    port = free_port()
    proc = start_server(run, port, extra)
    try:
        base = f"http://127.0.0.1:{port}"
        rows = [asyncio.run(load_level(port, "/api/predict", photos, c, seconds, max_requests)) for c in levels]
        health = httpx.get(f"{base}/healthz", timeout=5).json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows, health


# --------------------------------------------------------------------------- main

TARGETS = {"e2e_p50_ms": 20.0, "clients": 16, "images_per_s": 50.0, "p99_ms": 300.0}
"""The issue's targets (2-core CPU, default model, 178x218 photos)."""


def bench_run(run: str, args: argparse.Namespace, photos: list[bytes]) -> dict:
    """Latency and service measurements of one run (the service once per ``--workers``
    count), printed as a table."""
    from facelab.bundle import read_bundle

    _, bundle = read_bundle(run)
    latency = [e2e_latency(run, b, photos, args.seconds, args.max_images, args.all_faces) for b in ("onnx", "torch")]
    extra = (["--all-faces"] if args.all_faces else []) + args.serve_args.split()
    rows, batching = [], {}
    for w in args.workers:
        level_rows, health = service(run, photos, args.clients, args.seconds, args.max_requests,
                                     [*extra, "--workers", str(w)])
        rows += [{"workers": w, **r} for r in level_rows]
        batching[w] = health.get("batching")
    print(f"\n== {run}: model {bundle['model'].get('name')} ({bundle['task']['kind']}, input "
          f"{bundle['input']['size']}), detector {bundle['prepare'].get('detector')}, photos 178x218, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    print(f"\n{'end-to-end (1 image)':22s} {'images':>7s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for r in latency:
        print(f"{r['backend']:22s} {r['images']:7d} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}")
    print(f"\n{'service':9s} {'clients':>7s} {'requests':>9s} {'img/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s}  errors")
    for r in rows:
        print(f"{r['workers']:<2d} worker{'s' if r['workers'] > 1 else ' '} {r['clients']:7d} {r['requests']:9d} "
              f"{r['images_per_s']:7.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}  {r['errors'] or 'none'}")
    for w, b in batching.items():
        print(f"batching ({w} worker{'s: one process' if w > 1 else ''}): {json.dumps(b)}")
    result = {"run": run, "model": bundle["model"], "input": bundle["input"],
              "detector": bundle["prepare"].get("detector"), "latency": latency, "service": rows,
              "batching": batching, "targets_met": targets_met(latency, rows)}
    print(f"targets (p50 <= {TARGETS['e2e_p50_ms']:g} ms with ONNX; at {TARGETS['clients']} clients >= "
          f"{TARGETS['images_per_s']:g} img/s, p99 <= {TARGETS['p99_ms']:g} ms, no errors): {result['targets_met']}")
    return result


def targets_met(latency: list[dict], rows: list[dict]) -> dict[str, Any]:
    """Each target met or not (the throughput one per worker count; None: not measured)."""
    onnx = [r for r in latency if r["backend"] == "onnx"]
    busy = [r for r in rows if r["clients"] == TARGETS["clients"]]
    return {"e2e_p50": onnx[0]["p50_ms"] <= TARGETS["e2e_p50_ms"] if onnx else None,
            "throughput_by_workers": {r["workers"]: r["images_per_s"] >= TARGETS["images_per_s"]
                                      and r["p99_ms"] <= TARGETS["p99_ms"] and not r["errors"] for r in busy}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, nargs="+",
                    help="run folder(s) to measure, one after the other (first: the default model's run)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    ap.add_argument("--max-images", type=int, default=300, help="most images per latency measurement")
    ap.add_argument("--max-requests", type=int, default=10000, help="most requests per load level")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--all-faces", action="store_true", help="every face, not only the bundle's policy")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="measure the service with each of these `facelab serve --workers` counts")
    ap.add_argument("--serve-args", default="", help="extra `facelab serve` options, e.g. '--threads 4'")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve.json"))
    args = ap.parse_args()

    photos = photo_bytes(100)
    load_before = os.getloadavg()[0]
    results = [bench_run(run, args, photos) for run in args.run]

    from facelab._io import write_json

    write_json(args.out, {"runs": results, "all_faces": args.all_faces, "serve_args": args.serve_args,
                          "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                          "command": " ".join(sys.argv)})
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
