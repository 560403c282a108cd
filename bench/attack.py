"""Benchmark the service under attack: honest clients' throughput and /healthz latency while
idle connections, slow-loris heads and many-part bodies hit the server.

``facelab serve RUN`` runs as a real uvicorn process on 127.0.0.1 (loopback only). Two
phases of ``--seconds`` each, same server:

1. **unloaded**: ``--clients`` (16) honest closed-loop clients POST photos (keep-alive,
   pre-encoded multipart, as bench/serve.py) while a prober GETs ``/healthz`` every 20 ms;
2. **attack**: the same, while an attacker process holds ``--idle`` (500) connections (half
   silent, half trickling a request head one byte a second) and reopens each one the
   server closes, and sends ``--bodies`` (4) many-part bodies (9 MB of 174,763 tiny parts,
   the issue's case) one after the other on each of 4 connections.

Every honest answer must be a 200 with a JSON ``faces`` list (anything else is an error);
the targets: attack throughput >= 80 % of unloaded, 0 errors, /healthz p99 < 200 ms. Prints
a table and writes ``bench/results/attack.json``. The attacker, the clients and the server
share the machine's cores, so the attack costs the server the attacker's CPU too.

    .venv/bin/python bench/attack.py --run runs/bench-serve          # make bench trains it
    .venv/bin/python bench/attack.py --run runs/bench-serve --seconds 10 --idle 500 --bodies 4
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
import serve as bench_serve  # noqa: E402  (bench/serve.py: server start, load generator)

TARGETS = {"throughput_ratio": 0.8, "errors": 0, "healthz_p99_ms": 200.0}


# --------------------------------------------------------------------------- the attacker

def many_parts_request(port: int, parts: int) -> bytes:
    """One POST /api/predict whose multipart body is ``parts`` tiny fields (issue #13: 174,763 = 9 MB)."""
    boundary = "b"
    part = f"--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ny\r\n".encode()
    body = part * parts + f"--{boundary}--\r\n".encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _idle_slot(port: int, k: int, stop: float, counts: dict[str, int]) -> None:
    """One attacker connection: open it (silent, or trickling a request head one byte a
    second), wait until the server closes it, open it again."""
    head = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect_errors"] += 1
            await asyncio.sleep(0.05)
            continue
        counts["opened"] += 1
        counts["open_now"] += 1
        try:
            i = 0
            while time.monotonic() < stop:
                if k % 2:
                    writer.write(head[i:i + 1])
                    i += 1
                try:
                    if not await asyncio.wait_for(reader.read(4096), 1.0):
                        break  # closed by the server
                    break  # an answer (408) means it will close: reopen
                except asyncio.TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            counts["open_now"] -= 1
            writer.close()


async def _bodies_slot(port: int, request: bytes, stop: float, counts: dict[str, int]) -> None:
    """One connection sending many-part bodies back to back, reading each answer."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while time.monotonic() < stop:
                writer.write(request)
                status, _ = await asyncio.wait_for(bench_serve.read_response(reader), 60)
                counts[f"bodies_{status}"] = counts.get(f"bodies_{status}", 0) + 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            counts["bodies_dropped"] = counts.get("bodies_dropped", 0) + 1
            await asyncio.sleep(0.05)


def attacker(port: int, idle: int, bodies: int, parts: int, seconds: float, out: Any) -> None:
    """The attacker process: ``idle`` held connections and ``bodies`` many-part senders."""
    request = many_parts_request(port, parts)
    counts: dict[str, int] = {"opened": 0, "open_now": 0, "connect_errors": 0}
    peak = [0]

    async def main() -> None:
        stop = time.monotonic() + seconds
        tasks = [asyncio.create_task(_idle_slot(port, k, stop, counts)) for k in range(idle)]
        tasks += [asyncio.create_task(_bodies_slot(port, request, stop, counts)) for _ in range(bodies)]
        while time.monotonic() < stop:
            await asyncio.sleep(0.1)
            peak[0] = max(peak[0], counts["open_now"])
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put({**counts, "peak_open": peak[0], "body_bytes": len(request),
             "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)})


# --------------------------------------------------------------------------- honest side

async def _probe_health(port: int, stop: float) -> list[float]:
    """GET /healthz every 20 ms on fresh connections (as a monitor would); latency in ms,
    inf for a failure."""
    ms: list[float] = []
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status, _ = await asyncio.wait_for(bench_serve.read_response(reader), 10)
            writer.close()
            ms.append((time.perf_counter() - t0) * 1e3 if status == 200 else float("inf"))
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            ms.append(float("inf"))
        await asyncio.sleep(0.02)
    return ms


async def honest_phase(port: int, photos: list[bytes], clients: int, seconds: float) -> dict:
    stop = time.monotonic() + seconds
    load, health = await asyncio.gather(
        bench_serve.load_level(port, "/api/predict", photos, clients, seconds, 10**9), _probe_health(port, stop))
    finite = [h for h in health if h != float("inf")]
    return {**load, "healthz": {"probes": len(health), "failed": len(health) - len(finite),
                                **bench_serve.percentiles(finite), "max_ms": round(max(finite or [0]), 1)}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(port: int, photos: list[bytes], args: argparse.Namespace, attack: bool, server_pid: int) -> dict:
    """One phase; with the server's CPU seconds over the measured time (and the attacker's
    over its whole run)."""
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    if not attack:
        row = {"phase": "unloaded", **asyncio.run(honest_phase(port, photos, args.clients, args.seconds))}
        row["server_cpu_per_s"] = round((cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0), 2)
        return row
    out: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=attacker, args=(port, args.idle, args.bodies, args.parts,
                                                                   args.seconds + args.warmup + 1, out))
    proc.start()
    time.sleep(args.warmup)  # the attack is in place before the honest clients start
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    row = {"phase": "attack", **asyncio.run(honest_phase(port, photos, args.clients, args.seconds))}
    row["server_cpu_per_s"] = round((cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0), 2)
    row["attacker"] = out.get(timeout=120)
    proc.join(timeout=30)
    return row


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "bench-serve"), help="run folder to serve")
    ap.add_argument("--seconds", type=float, default=10.0, help="time per phase")
    ap.add_argument("--clients", type=int, default=16, help="honest closed-loop clients")
    ap.add_argument("--idle", type=int, default=500, help="idle / slow-loris connections the attacker holds")
    ap.add_argument("--bodies", type=int, default=4, help="many-part bodies in flight at once")
    ap.add_argument("--parts", type=int, default=174_763, help="parts per many-part body")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of attack before measuring")
    ap.add_argument("--serve-args", default="", help="extra `facelab serve` options")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "attack.json"))
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 200:
        sys.exit(f"ulimit -n is {soft}: the attacker needs about {args.idle + 200} sockets (raise it with ulimit -n)")
    if not Path(args.run).is_dir():
        sys.exit(f"no run folder {args.run}: train it first (make bench does: facelab train ... --name bench-serve)")
    photos = bench_serve.photo_bytes(100)
    load_before = os.getloadavg()
    port = bench_serve.free_port()
    server = bench_serve.start_server(args.run, port, args.serve_args.split())
    try:
        rows = [run_phase(port, photos, args, attack, server.pid) for attack in (False, True)]
        import httpx

        guard = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["connections"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except Exception:  # noqa: BLE001
            server.kill()
    load_after = os.getloadavg()
    base, hit = rows
    ratio = hit["images_per_s"] / base["images_per_s"] if base["images_per_s"] else 0.0
    met = {"throughput_ratio": ratio >= TARGETS["throughput_ratio"],
           "errors": not hit["errors"] and not base["errors"],
           "healthz_p99": hit["healthz"]["p99_ms"] < TARGETS["healthz_p99_ms"] and not hit["healthz"]["failed"]}

    print(f"\n== {args.run}: {args.clients} honest clients, attack = {args.idle} idle/slow-loris connections + "
          f"{args.bodies} many-part bodies ({args.parts} parts, {hit['attacker']['body_bytes'] / 1e6:.1f} MB); "
          f"{os.cpu_count()} CPU cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print(f"{'phase':9s} {'requests':>9s} {'img/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>7s}   "
          f"{'healthz':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'failed':>6s}")
    for r in rows:
        h = r["healthz"]
        print(f"{r['phase']:9s} {r['requests']:9d} {r['images_per_s']:7.1f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} "
              f"{sum(r['errors'].values()):7d}   {h['probes']:7d} {h['p50_ms']:7.1f} {h['p99_ms']:7.1f} "
              f"{h['max_ms']:7.1f} {h['failed']:6d}")
    a = hit["attacker"]
    print(f"\nattacker: {a['opened']} connections opened (at most {a['peak_open']} open at once), "
          f"many-part answers {({k: v for k, v in a.items() if k.startswith('bodies_')})}, "
          f"{a['cpu_s']:.1f} CPU s in {args.seconds + args.warmup + 1:g} s")
    per_cpu = [r["images_per_s"] / r["server_cpu_per_s"] if r["server_cpu_per_s"] else 0.0 for r in rows]
    print(f"server CPU (cores busy): unloaded {base['server_cpu_per_s']:.2f}, attack {hit['server_cpu_per_s']:.2f}; "
          f"images per server CPU-second: unloaded {per_cpu[0]:.0f}, attack {per_cpu[1]:.0f}")
    print(f"server guard: {guard}")
    print(f"throughput under attack: {100 * ratio:.0f} % of unloaded; targets (>= 80 %, 0 errors, healthz p99 < "
          f"200 ms): {met}")

    from facelab._io import write_json

    write_json(args.out, {"run": args.run, "rows": rows, "throughput_ratio": round(ratio, 3), "targets": TARGETS,
                          "targets_met": met, "guard": guard, "cpu_count": os.cpu_count(),
                          "platform": platform.platform(), "ulimit_n": soft,
                          "load_average": {"before": [round(x, 2) for x in load_before],
                                           "after": [round(x, 2) for x in load_after]},
                          "command": " ".join(sys.argv)})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
