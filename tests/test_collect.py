"""facelab collect against a local HTTP server serving real photos and broken responses."""
from __future__ import annotations

import csv
import io
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from facelab.collect import CollectConfig, collect, read_url_list
from facelab.data import DataError, load_source

FAST = dict(timeout=0.6, retries=1, backoff=0.05, workers=4)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    return bytes(data)


def _reencoded(jpeg: bytes) -> bytes:
    img = Image.open(io.BytesIO(jpeg))
    buf = io.BytesIO()
    img.resize((img.width * 3 // 4, img.height * 3 // 4)).save(buf, "JPEG", quality=55)
    return buf.getvalue()


class _Server:
    """127.0.0.1 on a free port, in a thread; records how often each path was asked for."""

    def __init__(self, photos: list[bytes]) -> None:
        self.hits: Counter[str] = Counter()
        routes = {f"/p/{i}.jpg": ("image/jpeg", b) for i, b in enumerate(photos)}
        routes["/copy.jpg"] = ("image/jpeg", photos[0])
        routes["/near.jpg"] = ("image/jpeg", _reencoded(photos[1]))
        routes["/page.jpg"] = ("text/html; charset=utf-8", b"<html><body>Not found, sorry</body></html>")
        routes["/lying.jpg"] = ("image/jpeg", b"<html>a web page served as image/jpeg</html>")
        routes["/truncated.jpg"] = ("image/jpeg", photos[2][: len(photos[2]) // 3])
        routes["/huge.png"] = ("image/png", _bomb_png(60000, 60000))
        routes["/flaky.jpg"] = ("image/jpeg", photos[3])
        redirects = {"/to-ftp.jpg": "ftp://127.0.0.1:1/photo.jpg", "/to-file.jpg": "file:///etc/passwd",
                     "/to-photo.jpg": "/p/5.jpg", "/loop.jpg": "/loop.jpg"}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (timeouts, early HTTP errors): expected here

            def do_GET(self) -> None:  # noqa: N802
                server.hits[self.path] += 1
                if self.path == "/slow.jpg":
                    time.sleep(3)
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/flaky.jpg" and server.hits[self.path] == 1:
                    self.send_error(503, "busy")
                    return
                if self.path not in routes:
                    self.send_error(404, "Not Found")
                    return
                ctype, body = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(celeba_mini: Path):
    files = sorted((celeba_mini / "img_align_celeba").glob("*.jpg"))[:6]
    with _Server([f.read_bytes() for f in files]) as s:
        yield s


def _write_list(path: Path, base: str, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "label"])
        for url, label in rows:
            w.writerow([url if url.startswith(("http", "ftp", "not")) else base + url, label])
    return path


def _by_url(report, base: str) -> dict[str, tuple[str, str]]:
    return {e.url.replace(base, ""): (e.status, e.reason) for e in report.entries}


def test_collect_downloads_checks_dedupes_and_resumes(server: _Server, tmp_path: Path) -> None:
    rows = [("/p/0.jpg", "smiling"), ("/p/1.jpg", "smiling"), ("/p/4.jpg", "neutral"),
            ("/p/5.jpg", "neutral"), ("/copy.jpg", "neutral"), ("/near.jpg", "smiling"),
            ("/missing.jpg", "neutral"), ("/slow.jpg", "neutral"), ("/page.jpg", "neutral"),
            ("/lying.jpg", "neutral"), ("/truncated.jpg", "neutral"), ("/huge.png", "neutral"),
            ("/flaky.jpg", "smiling"), ("not-a-url", "neutral")]
    urls = _write_list(tmp_path / "urls.csv", server.base, rows)
    out = tmp_path / "photos"
    report = collect(urls, out, progress=False, **FAST)
    got = _by_url(report, server.base)

    for ok in ("/p/0.jpg", "/p/1.jpg", "/p/4.jpg", "/p/5.jpg", "/flaky.jpg"):
        assert got[ok][0] == "ok", (ok, got[ok])
    assert got["/copy.jpg"][0] == "duplicate" and "smiling/" in got["/copy.jpg"][1]
    assert got["/near.jpg"][0] == "near-duplicate"
    assert got["/missing.jpg"] == ("rejected", "HTTP 404 Not Found")
    assert got["/slow.jpg"][0] == "failed" and "timed out" in got["/slow.jpg"][1]
    assert got["/page.jpg"][0] == "rejected" and "text/html" in got["/page.jpg"][1]
    assert got["/lying.jpg"][0] == "rejected" and "not an image" in got["/lying.jpg"][1]
    assert got["/truncated.jpg"][0] == "rejected" and "truncated" in got["/truncated.jpg"][1]
    assert got["/huge.png"][0] == "rejected" and "too large" in got["/huge.png"][1]
    assert got["not-a-url"][0] == "invalid"
    assert server.hits["/flaky.jpg"] == 2 and server.hits["/slow.jpg"] == 2  # one retry each

    # The result is a folder-per-label data set facelab reads, and the manifest says it all.
    table = load_source(out)
    assert sorted(table.label_names) == ["neutral", "smiling"]
    assert len(table) == 5
    with (out / "manifest.csv").open() as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == len(rows)
    assert all((out / r["file"]).is_file() for r in manifest if r["status"] == "ok")

    # A re-run downloads nothing already settled; it retries only the transient failure.
    before = Counter(server.hits)
    again = collect(urls, out, progress=False, **FAST)
    new_hits = {p: n - before[p] for p, n in server.hits.items() if n - before[p]}
    assert new_hits == {"/slow.jpg": 2}
    assert again.skipped == len(rows) - 2  # everything but the timeout and the invalid line
    assert again.counts == report.counts


def test_collect_plain_text_list_without_labels(server: _Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# my photos\n{server.base}/p/2.jpg\n\n{server.base}/p/3.jpg  \n")
    report = collect(urls, tmp_path / "out", progress=False, **FAST)
    assert report.counts == {"ok": 2}
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 2


def test_bad_url_list_and_config_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_url_list(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DataError, match="no URLs"):
        read_url_list(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("http://127.0.0.1/a.jpg ../..\n")
    with pytest.raises(DataError, match="line 1"):
        read_url_list(bad)
    with pytest.raises(ValueError, match="workers"):
        CollectConfig(workers=0)


def test_cli_collect(server: _Server, tmp_path: Path) -> None:
    import subprocess
    import sys

    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.base}/p/0.jpg happy\n{server.base}/missing.jpg happy\n")
    proc = subprocess.run([sys.executable, "-m", "facelab", "collect", str(urls), str(tmp_path / "out"),
                           "--timeout", "2", "--retries", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ok: 1  rejected: 1" in proc.stdout and "HTTP 404" in proc.stdout
    assert len(list((tmp_path / "out" / "happy").glob("*.jpg"))) == 1
    bad = subprocess.run([sys.executable, "-m", "facelab", "collect", str(tmp_path / "none.txt"),
                          str(tmp_path / "o2")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "URL list not found" in bad.stderr


def test_redirects_are_followed_to_http_only(server: _Server, tmp_path: Path) -> None:
    urls = _write_list(tmp_path / "urls.csv", server.base,
                       [("/to-ftp.jpg", "a"), ("/to-file.jpg", "a"), ("/to-photo.jpg", "a"), ("/loop.jpg", "a")])
    got = _by_url(collect(urls, tmp_path / "out", progress=False, **FAST), server.base)
    assert got["/to-photo.jpg"][0] == "ok"
    assert got["/to-ftp.jpg"] == ("rejected", "HTTP 302 redirect to a non-http(s) address (ftp:), not followed")
    assert got["/to-file.jpg"] == ("rejected", "HTTP 302 redirect to a non-http(s) address (file:), not followed")
    assert got["/loop.jpg"] == ("rejected", "more than 10 redirects")
    assert server.hits["/to-ftp.jpg"] == 1 and server.hits["/loop.jpg"] == 11  # refused, not retried


def test_a_full_disk_stops_collect_marked_incomplete_and_it_resumes(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC at facelab's write layer after two photos (the real full-disk tests of prepare,
    train and export are in test_disk_full.py)."""
    import errno
    import os

    import facelab._io as fio
    from facelab._io import DiskFullError
    from facelab.data import INCOMPLETE_MARKER

    rows = [(f"/p/{i}.jpg", "x") for i in range(6)]
    urls = _write_list(tmp_path / "urls.csv", server.base, rows)
    out = tmp_path / "out"
    real_write = fio._write_new
    photos_written: list[str] = []

    def full_after_two(tmp: Path, path: Path, data: bytes) -> None:
        if path.suffix == ".jpg":
            if len(photos_written) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            photos_written.append(path.name)
        real_write(tmp, path, data)

    monkeypatch.setattr(fio, "_write_new", full_after_two)
    with pytest.raises(DiskFullError, match=f"disk full writing to {out} .*marked incomplete"):
        collect(urls, out, progress=False, **{**FAST, "workers": 1})
    assert (out / INCOMPLETE_MARKER).is_file()
    with pytest.raises(DataError, match="incomplete, facelab collect stopped"):
        load_source(out)
    with (out / "manifest.csv").open() as f:  # written after the failure: what was saved
        assert sum(r["status"] == "ok" for r in csv.DictReader(f)) == 2
    monkeypatch.setattr(fio, "_write_new", real_write)
    hits = sum(server.hits.values())
    again = collect(urls, out, progress=False, **FAST)
    assert again.counts == {"ok": 6} and again.skipped == 2
    assert sum(server.hits.values()) - hits == 4  # only the photos not saved before
    assert not (out / INCOMPLETE_MARKER).exists() and len(load_source(out)) == 6


def test_collect_on_a_real_full_disk(server: _Server, tmp_path: Path) -> None:
    """A real full disk: a small tmpfs in a user + mount namespace (skipped where unavailable)."""
    from test_disk_full import _on_small_disk, _one_line, _unshare_works

    if not _unshare_works():
        pytest.skip("no user namespaces (unshare -rm) here")
    urls = _write_list(tmp_path / "urls.csv", server.base, [(f"/p/{i}.jpg", "x") for i in range(6)])
    cmd = ["collect", str(urls), "$DISK/out", "--workers", "1", "--timeout", "5"]
    _, (_, full, loaded, _, again, files) = _on_small_disk(tmp_path, [
        ["free", 24], cmd, ["load", "$DISK/out"], ["unfill"], cmd, ["files", "$DISK/out"]])
    assert full["rc"] == 3, full["stderr"][-2000:]
    line = _one_line(full["stderr"])
    assert "disk full writing to" in line and "/disk/out" in line and "run the same collect again" in line
    assert not loaded["loads"] and "incomplete, facelab collect stopped" in loaded["error"]
    assert again["rc"] == 0, again["stderr"][-2000:]
    assert "ok: 6" in again["stdout"]
    photos = [f for f in files["files"] if f.startswith("x/")]
    assert len(photos) == 6 and "FACELAB_INCOMPLETE.txt" not in files["files"]
