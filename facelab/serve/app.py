"""The FastAPI app of ``facelab serve``: JSON API, WebSocket stream, and the web page.

Routes: ``POST /api/predict`` (an image -> faces with per-model predictions),
``GET /api/models``, ``WS /api/stream`` (live video frames), ``GET /healthz``, ``/docs``
(a plain page built from the OpenAPI schema, no scripts), and the page at ``/`` (static
files in ``facelab/serve/static``, no CDN).

Work per request: multipart parsing, decoding, face detection and alignment run in a
thread pool (never on the event loop); the crops then go to each model's
:class:`MicroBatcher`, which joins the crops of concurrent requests into one model call.
Uploads are read into memory with a size cap and never written to disk; only the formats
of :data:`facelab.images.UPLOAD_FORMATS` are decoded (checked from their magic bytes).
Connections are watched by :mod:`facelab.serve.guard` (slow and idle clients), and API
keys never travel in URLs (:func:`check_key`, :mod:`facelab.serve.logs`).
"""

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np

from facelab.serve.batching import MicroBatcher

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_ENV = "FACELAB_API_KEY"
CONFIG_ENV = "FACELAB_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """How ``facelab serve`` runs."""

    runs: tuple[str, ...]
    """Run (or bundle) folders to serve; each becomes a model named after its folder."""
    backend: str = "auto"
    """``auto`` (ONNX Runtime when the run exports), ``onnx`` or ``torch``."""
    max_upload_bytes: int = 10 * 1024 * 1024
    """Largest accepted upload / video frame in bytes (413 above)."""
    max_pixels: int = 40_000_000
    """Largest accepted image in pixels (413 above; guards against decompression bombs)."""
    request_timeout: float = 30.0
    """Seconds a request may take, upload included (504 ``timeout`` after). Its queued
    detection and its crops waiting for a batch are then dropped, not computed."""
    api_key: str | None = None
    """When set, ``/api/*`` needs it in header ``X-API-Key`` or ``Authorization: Bearer``
    (WebSocket: those headers, or the subprotocol ``facelab.key.<base64url of the key>``).
    A key in a URL is refused. An empty key is an error, not "authentication off"."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from other sites; empty = CORS off."""
    max_batch: int = 32
    """Most face crops in one model call."""
    max_wait_ms: float = 4.0
    """Longest a request waits for others to join its batch."""
    threads: int = 0
    """Threads for decoding and face detection (0 = number of CPU cores)."""
    model_threads: int = 1
    """Threads inside one ONNX Runtime model call (0 = its default, one per core). One is
    best under load: batching and the detection threads already keep every core busy."""
    all_faces: bool = False
    """Every face of an image, even when the run's ``multi_face`` policy keeps the largest."""
    max_faces: int = 32
    """At most this many faces per image are classified (largest first)."""
    max_in_flight: int = 256
    """Requests (HTTP and WebSocket streams) handled at once; one more gets a JSON 503
    ``busy`` with ``Retry-After`` (a stream is closed with code 1013, "try again later").
    ``/healthz`` is never refused, so a monitor can tell busy from dead."""
    header_timeout: float = 10.0
    """Seconds a client has to send a whole request head (from connecting, or from the
    first byte of its next request on a keep-alive connection); then a 408 and the
    connection is closed (slow-loris)."""
    body_timeout: float = 10.0
    """Longest pause in seconds between two pieces of a request body the server is
    waiting for; then the connection is closed (a slow upload as a whole is bounded by
    ``request_timeout``)."""
    keep_alive_timeout: int = 10
    """Seconds an idle keep-alive connection stays open between two requests."""
    max_idle_connections: int = 1024
    """Connections per server process without a request in progress (just opened, still
    sending a request head, or keep-alive) kept at once; one more closes the oldest idle
    one, never-served connections first (never the one just opened), so an idle-connection
    flood evicts itself and parked keep-alive connections cannot lock new clients out. The
    server raises its open-file limit to fit (or lowers this to what the limit allows)."""
    max_header_bytes: int = 32 * 1024
    """Largest request head (request line + headers) in bytes; 431 above."""
    max_form_parts: int = 8
    """Most parts in a multipart upload (a photo form has one or two); 413 above."""
    max_part_header_bytes: int = 4096
    """Largest headers of one multipart part in bytes; 413 above."""

    def __post_init__(self) -> None:
        from facelab.predict import BACKENDS

        if not self.runs:
            raise ValueError("serve needs at least one run folder")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        for name in ("max_upload_bytes", "max_pixels", "max_batch", "max_faces", "max_in_flight",
                     "keep_alive_timeout", "max_idle_connections", "max_header_bytes", "max_form_parts",
                     "max_part_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout", "header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.threads < 0 or self.model_threads < 0:
            raise ValueError("max_wait_ms, threads and model_threads must be >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty (--api-key '' or FACELAB_API_KEY=); give a real key, "
                             "or unset it to run without authentication")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()
                                             and self.api_key == self.api_key.strip()):
            raise ValueError("the API key must be printable ASCII without leading or trailing spaces "
                             "(it travels in an HTTP header)")

    def guard_limits(self) -> Any:
        from facelab.serve.guard import GuardLimits

        return GuardLimits(header_timeout=self.header_timeout, body_timeout=self.body_timeout,
                           max_idle=self.max_idle_connections, max_header_bytes=self.max_header_bytes)


@dataclass(frozen=True)
class ApiKey:
    """The API key, kept only as a salted SHA-256 digest: that is all ``--workers``
    processes get (in their environment), never the key itself."""

    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, key: str) -> "ApiKey":
        salt = os.urandom(16)
        return cls(salt, hashlib.sha256(salt + key.encode()).digest())

    def matches(self, given: str | None) -> bool:
        """Constant-time comparison of the digests."""
        if not given:
            return False
        return hmac.compare_digest(hashlib.sha256(self.salt + given.encode()).digest(), self.digest)

    def encode(self) -> str:
        return f"{self.salt.hex()}:{self.digest.hex()}"

    @classmethod
    def decode(cls, text: str) -> "ApiKey":
        salt, digest = text.split(":")
        return cls(bytes.fromhex(salt), bytes.fromhex(digest))


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.close = False
        """Close the connection after the answer (the rest of the request body is not read)."""

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# --------------------------------------------------------------------------- models

@dataclass
class LoadedModel:
    name: str
    run: str
    predictor: Any
    batcher: MicroBatcher
    digest: str
    """Face-preparation config digest: models sharing it share one detection per image."""

    def info(self) -> dict[str, Any]:
        from facelab.predict import backend_of

        b = self.predictor.bundle
        return {"name": self.name, "backend": backend_of(self.predictor),
                "task": self.predictor.task.to_dict(), "input_size": b["input"]["size"],
                "detector": b.get("prepare", {}).get("detector"), "batching": self.batcher.stats.to_dict()}


@dataclass
class Service:
    """Everything a request needs: models, pools, per-thread face pipelines."""

    config: ServeConfig
    key: ApiKey | None = None
    """The API key's digest (None: no authentication)."""
    models: dict[str, LoadedModel] = field(default_factory=dict)
    cpu_pool: ThreadPoolExecutor | None = None
    model_pool: ThreadPoolExecutor | None = None
    form_pool: ThreadPoolExecutor | None = None
    """Multipart parsing (its own threads: a form is not queued behind face detections)."""
    _local: threading.local = field(default_factory=threading.local)
    _configs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> None:
        from facelab.predict import backend_of, face_pipeline, load_predictor, model_name

        threads = self.config.threads or os.cpu_count() or 2
        self.cpu_pool = ThreadPoolExecutor(threads, thread_name_prefix="facelab-cpu")
        self.model_pool = ThreadPoolExecutor(max(1, len(self.config.runs)), thread_name_prefix="facelab-model")
        self.form_pool = ThreadPoolExecutor(2, thread_name_prefix="facelab-form")
        for run in self.config.runs:
            predictor = load_predictor(run, self.config.backend, self.config.model_threads)
            name = _unique(model_name(run), self.models)
            pipe = face_pipeline(predictor.bundle, self.config.all_faces)
            digest = pipe.config.digest()
            self._configs[digest] = pipe.config
            batcher = MicroBatcher(_batch_fn(predictor), self.model_pool, self.config.max_batch,
                                   self.config.max_wait_ms)
            self.models[name] = LoadedModel(name, str(run), predictor, batcher, digest)
            log.info("model %s: %s backend, %d labels", name, backend_of(predictor), len(predictor.labels))
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny call per model, and every detection thread builds its own face
        pipelines now (a barrier makes the pool start all its threads), so the first real
        requests are not slow."""
        blank = np.full((160, 160, 3), 127, np.uint8)
        for m in self.models.values():
            m.predictor.predict_crops([blank])
        n = self.cpu_pool._max_workers  # noqa: SLF001 - the size we created it with
        barrier = threading.Barrier(n)

        def warm() -> None:
            for digest in self._configs:
                self.pipeline(digest).process(blank)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=30)

        for f in [self.cpu_pool.submit(warm) for _ in range(n)]:
            f.result()

    def pipeline(self, digest: str) -> Any:
        """This thread's own face pipeline (detectors need not be thread-safe)."""
        from facelab.detect import create_detector
        from facelab.prepare import FacePipeline

        mine = self._local.__dict__.setdefault("pipelines", {})
        if digest not in mine:
            config = self._configs[digest]
            pipe = FacePipeline(config)
            pipe.detector = create_detector(config.detector, **config.detector_options)
            mine[digest] = pipe
        return mine[digest]

    def select(self, names: str | None) -> list[LoadedModel]:
        if not names:
            return list(self.models.values())
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in self.models]
        if unknown:
            raise ApiError(404, "unknown_model", f"unknown model(s) {unknown}; loaded: {list(self.models)}")
        return [self.models[n] for n in wanted]

    # ------------------------------------------------------------------ one image
    def _decode_and_detect(self, data: bytes, digests: list[str]) -> tuple[tuple[int, int], dict[str, list]]:
        from facelab.images import UPLOAD_FORMATS, ImageError, upright_size

        # process_file: the upload is decoded the way training decoded its photos (a JPEG at
        # the smallest DCT scale that suffices), so the crop is the one training would cut
        try:
            found = {d: self.pipeline(d).process_file(data, "upload", formats=UPLOAD_FORMATS,
                                                      max_pixels=self.config.max_pixels)[1][: self.config.max_faces]
                     for d in digests}
        except ImageError as exc:
            raise _image_error(exc) from None
        w, h = upright_size(data)
        return (h, w), found

    async def analyse(self, data: bytes, models: list[LoadedModel]) -> dict[str, Any]:
        """Image bytes -> the JSON answer: faces with every selected model's prediction."""
        from facelab.predict import prediction_dict

        if len(data) > self.config.max_upload_bytes:
            raise _too_large(len(data), self.config.max_upload_bytes)
        t0 = time.perf_counter()
        digests = sorted({m.digest for m in models})
        loop = asyncio.get_running_loop()
        (h, w), found = await loop.run_in_executor(self.cpu_pool, self._decode_and_detect, data, digests)
        t1 = time.perf_counter()
        probs = await asyncio.gather(*(m.batcher.submit([p.crop for p in found[m.digest]]) for m in models))
        faces: list[dict[str, Any]] = []
        for m, rows in zip(models, probs):
            for prepared, (row, identity, spread) in zip(found[m.digest], rows):
                entry = _face_entry(faces, prepared.face)
                entry["predictions"][m.name] = prediction_dict(m.predictor.task, row, identity, spread)
        t2 = time.perf_counter()
        return {"width": w, "height": h, "models": [m.name for m in models], "faces": faces,
                "timing_ms": {"detect": round((t1 - t0) * 1e3, 2), "classify": round((t2 - t1) * 1e3, 2),
                              "total": round((t2 - t0) * 1e3, 2)}}

    async def start(self) -> None:
        for m in self.models.values():
            m.batcher.start()

    async def stop(self) -> None:
        for m in self.models.values():
            await m.batcher.stop()
        for pool in (self.cpu_pool, self.model_pool, self.form_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def _unique(name: str, taken: dict) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    return out


def _face_entry(faces: list[dict[str, Any]], face: Any) -> dict[str, Any]:
    """The entry of ``face`` in ``faces`` (same face found by another model's detector:
    boxes overlapping by IoU >= 0.5), appended when new."""
    for entry in faces:
        if _iou(entry["box"], face.box) >= 0.5:
            return entry
    from facelab.predict import face_dict

    entry = {**face_dict(face), "predictions": {}}
    faces.append(entry)
    return entry


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


ACCEPTED = "JPEG, PNG, WebP, BMP or GIF (first frame)"
"""The upload formats in words (:data:`facelab.images.UPLOAD_FORMATS`)."""


def _image_error(exc: Any) -> ApiError:
    if exc.reason.startswith("too large"):
        return ApiError(413, "image_too_large", f"image {exc.reason}")
    if exc.reason.startswith("unsupported format"):
        return ApiError(415, "unsupported_format", f"the upload is in an {exc.reason}; send a {ACCEPTED} photo")
    if exc.reason.startswith("not an image") or exc.reason.startswith("empty"):
        return ApiError(415, "not_an_image", f"the upload is {exc.reason}; send a {ACCEPTED} photo")
    return ApiError(400, "bad_image", f"the upload could not be decoded: {exc.reason}")


FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body may carry beyond ``max_upload_bytes`` (boundaries, part headers):
the limit quoted is always ``max_upload_bytes``."""


def _too_large(n: int, limit: int, more: bool = False) -> ApiError:
    size = f"more than {limit} bytes" if more else f"{n} bytes"
    return ApiError(413, "upload_too_large", f"the upload ({size}) is larger than the server's limit of "
                                             f"{limit} bytes ({limit / 2 ** 20:g} MB, --max-upload-mb)")


# --------------------------------------------------------------------------- uploads

class _FormLimit(Exception):
    """Raised inside the multipart parser's callbacks to stop at a limit."""

    def __init__(self, error: ApiError) -> None:
        self.error = error


class FormParser:
    """An incremental, in-memory multipart parser (never spooled to disk) with caps: it
    stops with a 413 at the ``max_parts + 1``-th part, or when one part's headers pass
    ``max_part_header_bytes``, so a body of thousands of tiny parts is refused after its
    first few, before the rest is even read. :meth:`feed` is CPU work: call it in a worker
    thread, not on the event loop."""

    def __init__(self, content_type: str, max_parts: int = 8, max_part_header_bytes: int = 4096) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "bad_form", "multipart upload without a boundary")
        self.max_parts, self.max_part_header_bytes = max_parts, max_part_header_bytes
        self.parts: list[tuple[str, str, bytes]] = []
        self._cur: dict[str, Any] = {}
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_bytes("field", d, s, e),
            "on_header_value": lambda d, s, e: self._header_bytes("value", d, s, e),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self._cur["data"].extend(d[s:e]),
            "on_part_end": self._part_end,
        })

    def feed(self, chunk: bytes) -> None:
        self._call(self._parser.write, chunk)

    def finish(self) -> list[tuple[str, str, bytes]]:
        """(field name, filename, data) of every part."""
        self._call(self._parser.finalize)
        return self.parts

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except _FormLimit as exc:
            raise exc.error from None
        except Exception as exc:  # noqa: BLE001 - any parser failure is the client's malformed form
            raise ApiError(400, "bad_form", f"malformed multipart form ({exc})") from None

    def _part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise _FormLimit(ApiError(413, "too_many_parts", f"the form has more than {self.max_parts} parts "
                                      "(--max-form-parts); send the photo in one field named 'image'"))
        self._cur.update(headers={}, data=bytearray(), field=bytearray(), value=bytearray(), header_bytes=0)

    def _header_bytes(self, target: str, d: bytes, s: int, e: int) -> None:
        self._cur["header_bytes"] += e - s
        if self._cur["header_bytes"] > self.max_part_header_bytes:
            raise _FormLimit(ApiError(413, "part_header_too_large", f"a form part's headers are larger than "
                                      f"{self.max_part_header_bytes} bytes (--max-part-header-bytes)"))
        self._cur[target].extend(d[s:e])

    def _header_end(self) -> None:
        cur = self._cur
        cur["headers"][bytes(cur["field"]).lower()] = bytes(cur["value"])
        cur["field"], cur["value"] = bytearray(), bytearray()

    def _part_end(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, disp = parse_options_header(self._cur["headers"].get(b"content-disposition", b""))
        self.parts.append((disp.get(b"name", b"").decode(errors="replace"),
                           disp.get(b"filename", b"").decode(errors="replace"), bytes(self._cur["data"])))


def parse_multipart(body: bytes, content_type: str, max_parts: int = 8,
                    max_part_header_bytes: int = 4096) -> list[tuple[str, str, bytes]]:
    """(field name, filename, data) of every part of a whole multipart body (:class:`FormParser`)."""
    form = FormParser(content_type, max_parts, max_part_header_bytes)
    form.feed(body)
    return form.finish()


def image_of_form(parts: list[tuple[str, str, bytes]]) -> bytes:
    """The photo of a form: field ``image``, else the first file."""
    for name, filename, data in parts:
        if name == "image" or filename:
            return data
    raise ApiError(400, "missing_image", "the form has no file; send the photo in a field named 'image'")


FEED_BYTES = 256 * 1024
"""A form's body goes to the parser thread in pieces of about this size (the first at once)."""


async def read_upload(request: Any, config: ServeConfig, pool: Any) -> bytes:
    """The photo of a request (multipart field ``image`` or the first file, or the raw
    body), read into memory and refused with 413 as soon as it passes the limits.

    A form is parsed while it arrives, in ``pool``'s threads (never on the event loop), so
    a form of many tiny parts is refused after its first piece. An error while the body
    is still arriving is marked ``close``: the answer closes the connection rather than
    reading the rest."""
    from starlette.requests import ClientDisconnect

    limit = config.max_upload_bytes
    content_type = request.headers.get("content-type", "")
    form = FormParser(content_type, config.max_form_parts, config.max_part_header_bytes) \
        if content_type.startswith("multipart/form-data") else None
    cap = limit + (FORM_OVERHEAD if form else 0)
    declared = request.headers.get("content-length")
    loop = asyncio.get_running_loop()
    chunks, pending, size, pending_size = [], [], 0, 0
    try:
        if declared and declared.isdigit() and int(declared) > cap:
            raise _too_large(int(declared), limit)
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise _too_large(size, limit, more=True)
            if form is None:
                chunks.append(chunk)
                continue
            pending.append(chunk)
            pending_size += len(chunk)
            if size == len(chunk) or pending_size >= FEED_BYTES:  # the first piece at once
                await loop.run_in_executor(pool, form.feed, b"".join(pending))
                pending, pending_size = [], 0
    except ApiError as exc:
        exc.close = True
        raise
    except ClientDisconnect:
        raise ApiError(400, "disconnected", "the client went away before its upload was complete") from None
    if form is None:
        if not size:
            raise ApiError(400, "missing_image", "empty request; POST a photo as multipart field 'image' "
                                                 "or as the raw body with Content-Type image/jpeg")
        return b"".join(chunks)
    if pending:
        await loop.run_in_executor(pool, form.feed, b"".join(pending))
    return image_of_form(await loop.run_in_executor(pool, form.finish))


# --------------------------------------------------------------------------- the app

class _InFlightLimit:
    """ASGI middleware: at most ``limit`` requests at once, the next answered at once with
    a JSON 503 (uvicorn's own ``limit_concurrency`` answers plain text and counts idle
    connections too, so it is off; idle connections are :mod:`facelab.serve.guard`'s job)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await self._refuse(scope, receive, send)
            return
        self.active += 1  # one event loop: no lock needed between the check and this
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        log.warning("busy: %d requests in flight (--max-connections); refused %s", self.active, scope.get("path"))
        if scope["type"] == "websocket":  # accept, then close: a close code reaches the client
            await receive()  # websocket.connect
            await send({"type": "websocket.accept", "subprotocol": _ws_subprotocol(scope)})
            await send({"type": "websocket.close", "code": 1013, "reason": "server busy, try again later"})
            return
        from fastapi.responses import JSONResponse

        error = ApiError(503, "busy", f"the server is handling {self.limit} requests already "
                                      "(its --max-connections); retry in a second")
        await JSONResponse(error.body(), status_code=error.status, headers={"Retry-After": "1"})(scope, receive, send)


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: its own scripts, styles and API only (no inline
script or style, no other site, not framed)."""
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"content-security-policy", CSP.encode()),
                    (b"cross-origin-opener-policy", b"same-origin")]


class _SecurityHeaders:
    """ASGI middleware: security headers on every answer; ``Cache-Control: no-store`` on
    ``/api/*`` (answers describe faces: no cache may keep them)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = SECURITY_HEADERS + ([(b"cache-control", b"no-store")] if scope["path"].startswith("/api/") else [])

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in extra if h[0] not in have)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _docs_page(app: Any) -> str:
    """``/docs``: the routes from the OpenAPI schema as plain HTML (no scripts, no CDN)."""
    from html import escape

    rows = []
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            rows.append(f"<tr><td><code>{method.upper()} {escape(path)}</code></td><td>{escape(params)}</td>"
                        f"<td>{escape(op.get('summary', ''))}: {escape(op.get('description', ''))}</td></tr>")
    rows.append("<tr><td><code>WS /api/stream?models=a,b</code></td><td>models</td><td>Live video: JPEG "
                "frames as binary messages, one JSON answer each; key in the X-API-Key header or the "
                "subprotocol facelab.key.&lt;base64url key&gt;</td></tr>")
    return ("<!doctype html><html lang=en><meta charset=utf-8><title>facelab API</title>"
            "<link rel=stylesheet href=/static/style.css><body class=docs><h1>facelab API</h1>"
            "<p>The OpenAPI schema: <a href=/openapi.json>/openapi.json</a>. "
            "Routes under /api need the API key when the server has one.</p>"
            "<table><tr><th>route</th><th>parameters</th><th>what</th></tr>" + "".join(rows) + "</table></body></html>")


def create_app(config: ServeConfig, key: ApiKey | None = None) -> Any:
    """The FastAPI application (models load in its lifespan). ``key``: the API key's
    digest when ``config.api_key`` is not given (``--workers`` processes)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from facelab import __version__
    from facelab.serve import guard

    service = Service(config, key=ApiKey.of(config.api_key) if config.api_key else key)
    guard.configure(config.guard_limits())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.get_running_loop().run_in_executor(None, service.load)
        await service.start()
        log.info("serving %d model(s): %s", len(service.models), ", ".join(service.models))
        yield
        await service.stop()

    app = FastAPI(title="facelab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Face classifiers trained with facelab: upload a photo, get every face "
                              "with each model's probabilities.")
    app.state.service = service
    app.include_router(api_router())

    @app.exception_handler(ApiError)
    async def _api_error(request: Any, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers={"Connection": "close"} if exc.close else None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, "http_error", str(exc.detail)).body(),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(422, "invalid_request", str(exc.errors())).body(), status_code=422)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Content-Type"])
    app.add_middleware(_InFlightLimit, limit=config.max_in_flight)  # refuses before any work
    app.add_middleware(_SecurityHeaders)  # outermost: every answer gets the headers, 503s too
    return app


def api_router() -> Any:
    """The ``/api`` routes and ``/healthz``."""
    from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect

    router = APIRouter()
    upload_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}

    def service_of(request: Any) -> Service:
        return request.app.state.service

    @router.get("/healthz", tags=["service"])
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness: which models are loaded and how batching went so far."""
        from facelab.serve import guard

        service = service_of(request)
        return {"status": "ok", "models": list(service.models),
                "batching": {n: m.batcher.stats.to_dict() for n, m in service.models.items()},
                "connections": guard.current().to_dict()}

    @router.get("/api/models", tags=["predict"])
    async def models(request: Request) -> dict[str, Any]:
        """The loaded models: task, labels, thresholds, backend, input size, detector."""
        service = service_of(request)
        check_key(service.key, _key_of(request))
        return {"models": [m.info() for m in service.models.values()]}

    @router.post("/api/predict", tags=["predict"], openapi_extra=upload_doc)
    async def predict(request: Request, models: str | None = Query(
            None, description="Comma-separated model names (default: all)")) -> dict[str, Any]:
        """A photo (multipart field ``image``, or the raw body) -> every face with its box,
        landmarks and each selected model's probabilities and decision."""
        service = service_of(request)
        check_key(service.key, _key_of(request))
        chosen = service.select(models)
        cfg = service.config

        async def work() -> dict[str, Any]:
            data = await read_upload(request, cfg, service.form_pool)
            return await service.analyse(data, chosen)

        return await _with_timeout(work(), service.config.request_timeout)

    @router.websocket("/api/stream")
    async def stream(ws: WebSocket) -> None:
        """Live video: send JPEG frames as binary messages, get one JSON answer per frame
        (send the next frame after the answer). A text message ``{"models": [..]}``
        changes the models. The API key comes in the ``X-API-Key`` (or ``Authorization:
        Bearer``) header or as the subprotocol ``facelab.key.<base64url of the key>`` (what
        a browser can send), never in the URL."""
        service: Service = ws.app.state.service
        await ws.accept(subprotocol=_ws_subprotocol(ws.scope))
        try:
            if "api_key" in ws.query_params:
                raise ApiError(401, "unauthorized", "the API key must not be in the URL (URLs get logged): "
                                                    "send it in the X-API-Key header or as the WebSocket "
                                                    "subprotocol facelab.key.<base64url of the key>")
            check_key(service.key, _key_of(ws) or _ws_key(ws.scope))
            chosen = service.select(ws.query_params.get("models"))
        except ApiError as exc:
            await ws.send_json(exc.body())
            await ws.close(code=1008)
            return
        try:
            while True:
                msg = await ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    break
                chosen, answer = await _stream_message(service, chosen, msg)
                await ws.send_json(answer)
        except WebSocketDisconnect:
            pass

    return router


WS_PROTOCOL = "facelab"
WS_KEY_PREFIX = "facelab.key."


def _ws_subprotocol(scope: dict) -> str | None:
    """``facelab`` when the client offered it (a browser that sends its key as a
    subprotocol must get one of its offers back), else none."""
    return WS_PROTOCOL if WS_PROTOCOL in scope.get("subprotocols", ()) else None


def _ws_key(scope: dict) -> str | None:
    """The key sent as subprotocol ``facelab.key.<base64url, no padding>``."""
    for proto in scope.get("subprotocols", ()):
        if proto.startswith(WS_KEY_PREFIX):
            code = proto[len(WS_KEY_PREFIX):]
            try:
                return base64.urlsafe_b64decode(code + "=" * (-len(code) % 4)).decode()
            except ValueError:
                return None
    return None


def _models_in(text: str) -> str:
    """The model names of a text message ``{"models": ["a", "b"]}`` (or ``"a,b"``), as a
    comma-separated string; a 400 ``bad_message`` for anything else."""
    usage = 'a text message must be JSON like {"models": ["name", ...]}; send video frames as binary messages'
    try:
        msg = json.loads(text)
    except ValueError:
        raise ApiError(400, "bad_message", f"not JSON: {usage}") from None
    if not isinstance(msg, dict) or "models" not in msg:
        raise ApiError(400, "bad_message", f"no 'models' key: {usage}")
    wanted = msg["models"]
    if isinstance(wanted, str):
        wanted = wanted.split(",")
    if not isinstance(wanted, list) or not all(isinstance(n, str) for n in wanted):
        raise ApiError(400, "bad_message", f"'models' must be a list of model names: {usage}")
    return ",".join(wanted)


async def _stream_message(service: Service, chosen: list[LoadedModel], msg: dict) -> tuple[list, dict]:
    try:
        if msg.get("text") is not None:
            chosen = service.select(_models_in(msg["text"]))
            return chosen, {"models": [m.name for m in chosen]}
        answer = await _with_timeout(service.analyse(msg.get("bytes") or b"", chosen),
                                     service.config.request_timeout)
        return chosen, answer
    except ApiError as exc:
        return chosen, exc.body()
    except Exception:  # noqa: BLE001 - one bad frame must not end the stream
        log.exception("stream frame failed")
        return chosen, ApiError(500, "internal_error", "the server failed on this frame; see its log").body()


async def _with_timeout(coro: Any, seconds: float) -> Any:
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"the request took longer than the server's limit of {seconds:g} s "
                                       "(server busy or a very large photo); try again, or start the "
                                       "server with a larger --timeout") from None


def _key_of(request: Any) -> str | None:
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key


def check_key(key: ApiKey | None, given: str | None) -> None:
    """401 unless the API key matches (constant-time compare); no-op when no key is set."""
    if key is None:
        return
    if not key.matches(given):
        raise ApiError(401, "unauthorized", "missing or wrong API key; send it in the X-API-Key header "
                                            "(WebSocket: that header, or the subprotocol "
                                            "facelab.key.<base64url of the key>)")


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          access_log: bool = False, workers: int = 1) -> None:
    """Run the app with uvicorn until interrupted (one line per request only with
    ``access_log``: at a hundred requests a second the log costs CPU and says little).

    Connections go through :mod:`facelab.serve.guard` (request-head and body timeouts, a
    cap on idle connections); ``config.max_in_flight`` limits requests in the app (JSON
    503). uvicorn's own ``limit_concurrency``, which counts idle connections too and
    answers everyone in plain text once they fill it, is off. Log lines never carry a
    query string (:mod:`facelab.serve.logs`); ``trace`` logging (which prints headers) is
    refused.

    ``workers`` > 1 starts that many server processes on the same port, each loading the
    models in its own lifespan: face detection holds Python's GIL, so one process keeps
    about one core busy however many threads it has. The workers get their config in the
    environment (``FACELAB_SERVE_CONFIG``) with the API key replaced by its salted
    digest, and ``FACELAB_API_KEY`` is removed from the environment they inherit."""
    from facelab.serve import guard, logs

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if log_level.lower() not in logs.LEVELS:
        raise ValueError(f"log level {log_level!r} is not one of {', '.join(logs.LEVELS)} "
                         "(trace would print request headers, API keys included)")
    uvicorn = _require_uvicorn()
    config = _fit_open_files(config)
    os.environ.pop(API_KEY_ENV, None)  # child processes need not inherit the key
    options = dict(host=host, port=port, log_level=log_level, timeout_keep_alive=config.keep_alive_timeout,
                   limit_concurrency=None, ws_max_size=config.max_upload_bytes + FORM_OVERHEAD, access_log=access_log,
                   http=guard.protocol_class(), log_config=logs.log_config(),
                   h11_max_incomplete_event_size=config.max_header_bytes)
    logs.install_on_root()
    if workers == 1:
        uvicorn.run(create_app(config), **options)
        return
    data = dataclasses.asdict(config)
    key = data.pop("api_key")
    data["api_key_digest"] = ApiKey.of(key).encode() if key else None
    os.environ[CONFIG_ENV] = json.dumps(data)
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, **options)


def _fit_open_files(config: ServeConfig) -> ServeConfig:
    """Raise the soft open-file limit (inherited by ``--workers`` processes) so that
    ``max_idle_connections`` + ``max_in_flight`` sockets fit; where the hard limit is lower,
    lower ``max_idle_connections`` to fit it, with a warning."""
    import resource

    spare = 128  # model files, pipes, the listening socket, log files
    need = config.max_idle_connections + config.max_in_flight + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        fit = max(16, soft - config.max_in_flight - spare)
        log.warning("open-file limit %d is too low for --max-idle-connections %d + --max-connections %d: "
                    "idle connections capped at %d (raise it with ulimit -n)", soft,
                    config.max_idle_connections, config.max_in_flight, fit)
        config = dataclasses.replace(config, max_idle_connections=fit)
    return config


def app_from_env() -> Any:
    """The app of one worker process (``serve(workers=N)``): its config comes from the
    environment variable ``FACELAB_SERVE_CONFIG`` (JSON of :class:`ServeConfig`, the API
    key as its salted digest ``api_key_digest``)."""
    data = json.loads(os.environ[CONFIG_ENV])
    digest = data.pop("api_key_digest", None)
    data["runs"], data["cors_origins"] = tuple(data["runs"]), tuple(data["cors_origins"])
    return create_app(ServeConfig(**data), key=ApiKey.decode(digest) if digest else None)


def _require_uvicorn() -> Any:
    from facelab._deps import require

    return require("uvicorn", "uvicorn[standard]", "facelab serve")


def _batch_fn(predictor: Any) -> Callable[[list[np.ndarray]], list[tuple[np.ndarray, str | None, Any]]]:
    """The batched model call: crops -> [(probabilities, open-set identity or None, ensemble
    spread or None)]."""
    from facelab.predict import classify_crops

    def run(crops: list[np.ndarray]) -> list[tuple[np.ndarray, str | None, Any]]:
        return list(zip(*classify_crops(predictor, crops)))
    return run
