"""facelab serve against a real uvicorn process on 127.0.0.1, with real face photos and
models: predictions, batching, the stream, timeouts, workers, busy. The HTTP contract
(keys, limits, error answers, model selection) is tested in-process in
test_serve_contract.py."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from facelab.bundle import read_bundle

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(runs: list[Path], workdir: Path, *args: str) -> Iterator[str]:
    """``python -m facelab serve RUNS`` on a free loopback port; yields its base URL.

    The server's TMPDIR is an empty folder of its own, so a test can check that nothing
    uploaded was written to disk."""
    port = free_port()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    log = open(workdir / "server.log", "wb")
    env = {**os.environ, "TMPDIR": str(workdir / "tmp")}
    cmd = [sys.executable, "-m", "facelab", "serve", *map(str, runs), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited ({proc.returncode}): {(workdir / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.time() > deadline:
                pytest.fail(f"server did not start: {(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(celeba_run: Path, binary_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("serve")
    with running_server([celeba_run, binary_run], work, "--api-key", KEY, "--max-upload-mb", "1",
                        "--max-megapixels", "3") as url:
        yield url, work


@pytest.fixture(scope="module")
def photos(celeba_wild: Path) -> list[Path]:
    return sorted((celeba_wild / "img_celeba").glob("*.jpg"))


def _post(url: str, data: bytes, key: str | None = KEY, name: str = "photo.jpg", **params: str) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(f"{url}/api/predict", files={"image": (name, data, "image/jpeg")}, headers=headers,
                      params=params, timeout=60)


def _post_all_at_once(url: str, photos: list[Path], key: str | None) -> list[httpx.Response]:
    """POST every photo concurrently (one multipart request each)."""
    headers = {"X-API-Key": key} if key else {}

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(
                f"{url}/api/predict", files={"image": (p.name, p.read_bytes(), "image/jpeg")},
                headers=headers) for p in photos))

    return asyncio.run(all_at_once())


def _model_names(runs: list[Path]) -> list[str]:
    from facelab.predict import model_name

    return [model_name(r) for r in runs]


def test_concurrent_predictions_are_each_correct(server: tuple[str, Path], photos: list[Path],
                                                 celeba_run: Path, binary_run: Path) -> None:
    """8 requests at once are batched together; each gets its own faces' probabilities,
    the same as the predictor gives for the photo's file (the training crop path)."""
    from facelab.predict import load_predictor
    from facelab.images import read_image

    url, _ = server
    chosen = photos[:8]
    responses = _post_all_at_once(url, chosen, KEY)
    names = _model_names([celeba_run, binary_run])
    local = [load_predictor(r) for r in (celeba_run, binary_run)]
    for photo, r in zip(chosen, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        rgb = read_image(photo)
        assert (body["height"], body["width"]) == rgb.shape[:2]
        assert body["faces"], f"no face found in {photo.name}"
        for name, predictor in zip(names, local):
            expected = predictor.predict_image(photo)
            got = [f for f in body["faces"] if name in f["predictions"]]
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert np.allclose(g["box"], e.face.box, atol=0.06)  # JSON: 0.1 px
                probs = np.asarray(list(g["predictions"][name]["probs"].values()))
                assert np.abs(probs - e.probs).max() < 1e-3
    stats = httpx.get(f"{url}/healthz").json()["batching"]
    assert sum(s["items"] for s in stats.values()) >= 2 * len(chosen)


def test_models_answer_what_their_bundles_say(server: tuple[str, Path], celeba_run: Path, binary_run: Path) -> None:
    models = httpx.get(f"{server[0]}/api/models", headers={"X-API-Key": KEY}).json()["models"]
    assert [m["name"] for m in models] == _model_names([celeba_run, binary_run])
    for m, run in zip(models, (celeba_run, binary_run)):
        assert m["task"] == read_bundle(run)[1]["task"]  # rebuilt from bundle.json, not restated


def test_bad_photos_through_the_real_face_pipeline(server: tuple[str, Path], photos: list[Path]) -> None:
    """The decoding the service really does (a JPEG at a reduced DCT scale) refuses a cut-off
    JPEG and a photo over --max-megapixels with JSON errors, and writes nothing to disk
    (test_serve_contract.py has the other errors)."""
    url, work = server
    before = set((work / "tmp").rglob("*"))
    good = photos[0].read_bytes()
    big = io.BytesIO()
    Image.open(photos[0]).convert("RGB").resize((2400, 2000)).save(big, "JPEG", quality=30)
    for what, r, status, code in (("truncated JPEG", _post(url, good[: len(good) // 2]), 400, "bad_image"),
                                  ("too many pixels", _post(url, big.getvalue()), 413, "image_too_large")):
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"], what
    assert set((work / "tmp").rglob("*")) == before, "an upload was written to disk"


def test_websocket_stream(server: tuple[str, Path], photos: list[Path], celeba_run: Path) -> None:
    import websockets.sync.client as ws_client

    url, _ = server
    name = _model_names([celeba_run])[0]
    ws_url = url.replace("http://", "ws://") + f"/api/stream?models={name}"
    with ws_client.connect(ws_url, additional_headers={"X-API-Key": KEY}, max_size=None) as ws:
        for photo in photos[:3]:
            ws.send(photo.read_bytes())
            answer = json.loads(ws.recv(timeout=60))
            assert answer["faces"] and name in answer["faces"][0]["predictions"]
        ws.send(b"definitely not a jpeg")
        assert json.loads(ws.recv(timeout=60))["error"]["code"] == "not_an_image"
        ws.send(photos[3].read_bytes())  # the stream goes on after a bad frame
        assert "faces" in json.loads(ws.recv(timeout=60))
    with ws_client.connect(url.replace("http://", "ws://") + "/api/stream") as ws:
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "unauthorized"


def test_request_timeout_answers_504_and_drops_the_work(binary_run: Path, photos: list[Path],
                                                        tmp_path: Path) -> None:
    """A batch that waits longer than the request may take (real knobs: --max-wait-ms far
    above --timeout, real detection and model): a JSON 504, and the abandoned crops are
    dropped from the batch, never run through the model."""
    with running_server([binary_run], tmp_path, "--timeout", "2", "--max-wait-ms", "5000") as url:
        r = _post(url, photos[0].read_bytes(), key=None)
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "timeout" and "--timeout" in error["message"]
        deadline = time.time() + 30
        while True:  # the batch closes 5 s after the crops arrived
            stats = httpx.get(f"{url}/healthz").json()["batching"][_model_names([binary_run])[0]]
            if stats["dropped"] or time.time() > deadline:
                break
            time.sleep(0.2)
        assert stats["dropped"] == 1 and stats["calls"] == 0 and stats["items"] == 0, stats
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_over_the_request_limit_answers_json_503_busy(binary_run: Path, photos: list[Path],
                                                      tmp_path: Path) -> None:
    """--max-connections 1 and a batch wait of 3 s keep the first request in flight while
    five more arrive: each of those gets a JSON 503 'busy' with Retry-After at once (not
    uvicorn's plain-text 503), /healthz still answers, and once the first is done the
    server takes requests again."""
    with running_server([binary_run], tmp_path, "--max-connections", "1", "--max-wait-ms", "3000") as url:

        async def first_and_five_more() -> tuple[httpx.Response, list[httpx.Response], int, int | None]:
            async with httpx.AsyncClient(timeout=60) as client:
                post = lambda: client.post(f"{url}/api/predict",  # noqa: E731
                                           files={"image": ("a.jpg", photos[0].read_bytes(), "image/jpeg")})
                first = asyncio.create_task(post())
                await asyncio.sleep(0.5)  # the first is now waiting for its batch to fill
                health = (await client.get(f"{url}/healthz")).status_code
                more = await asyncio.gather(*(post() for _ in range(5)))
                stream_close = await asyncio.to_thread(stream_close_code)
                return await first, more, health, stream_close

        def stream_close_code() -> int | None:
            import websockets.sync.client as ws_client
            from websockets.exceptions import ConnectionClosed

            with ws_client.connect(url.replace("http://", "ws://") + "/api/stream") as ws:
                try:
                    ws.recv(timeout=30)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None
            return None

        first, more, health, stream_close = asyncio.run(first_and_five_more())
        assert first.status_code == 200 and first.json()["faces"], first.text
        assert health == 200
        assert stream_close == 1013  # a live-video stream is refused too, with "try again later"
        for r in more:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/json" and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "busy" and "--max-connections" in r.json()["error"]["message"]
        assert _post(url, photos[1].read_bytes(), key=None).status_code == 200
