"""The FastAPI app of ``facelab serve``: JSON API, WebSocket stream, and the web page.

Routes: ``POST /api/predict`` (an image -> faces with per-model predictions),
``GET /api/models``, ``WS /api/stream`` (live video frames), ``GET /healthz``, ``/docs``,
and the page at ``/`` (static files in ``facelab/serve/static``, no CDN).

Work per request: decoding, face detection and alignment run in a thread pool (never on
the event loop); the crops then go to each model's :class:`MicroBatcher`, which joins the
crops of concurrent requests into one model call. Uploads are read into memory with a
size cap and never written to disk.
"""

import asyncio
import contextlib
import dataclasses
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
    """When set, ``/api/*`` needs header ``X-API-Key`` (WebSocket: ``?api_key=``)."""
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

    def __post_init__(self) -> None:
        from facelab.predict import BACKENDS

        if not self.runs:
            raise ValueError("serve needs at least one run folder")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        for name in ("max_upload_bytes", "max_pixels", "max_batch", "max_faces", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.max_wait_ms < 0 or self.threads < 0 or self.model_threads < 0:
            raise ValueError("max_wait_ms, threads and model_threads must be >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; leave it unset to turn authentication off")


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

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
        return {"name": self.name, "run": self.run, "backend": backend_of(self.predictor),
                "task": self.predictor.task.to_dict(), "input_size": b["input"]["size"],
                "detector": b.get("prepare", {}).get("detector"), "batching": self.batcher.stats.to_dict()}


@dataclass
class Service:
    """Everything a request needs: models, pools, per-thread face pipelines."""

    config: ServeConfig
    models: dict[str, LoadedModel] = field(default_factory=dict)
    cpu_pool: ThreadPoolExecutor | None = None
    model_pool: ThreadPoolExecutor | None = None
    _local: threading.local = field(default_factory=threading.local)
    _configs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> None:
        from facelab.predict import backend_of, face_pipeline, load_predictor, model_name

        threads = self.config.threads or os.cpu_count() or 2
        self.cpu_pool = ThreadPoolExecutor(threads, thread_name_prefix="facelab-cpu")
        self.model_pool = ThreadPoolExecutor(max(1, len(self.config.runs)), thread_name_prefix="facelab-model")
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
        from facelab.images import ImageError, decode_image

        try:
            rgb = decode_image(data, name="upload", max_pixels=self.config.max_pixels)
        except ImageError as exc:
            raise _image_error(exc) from None
        found = {d: self.pipeline(d).process(rgb)[: self.config.max_faces] for d in digests}
        return rgb.shape[:2], found

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
        for pool in (self.cpu_pool, self.model_pool):
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


def _image_error(exc: Any) -> ApiError:
    if exc.reason.startswith("too large"):
        return ApiError(413, "image_too_large", f"image {exc.reason}")
    if exc.reason.startswith("not an image") or exc.reason.startswith("empty"):
        return ApiError(415, "not_an_image", f"the upload is {exc.reason}; send a JPEG, PNG or WebP photo")
    return ApiError(400, "bad_image", f"the upload could not be decoded: {exc.reason}")


def _too_large(n: int, limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"upload of {n} bytes is larger than the limit of {limit} bytes")


# --------------------------------------------------------------------------- uploads

async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (in memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def image_from_request(body: bytes, content_type: str) -> bytes:
    """The image bytes of a multipart form (field ``image`` or the first file) or a raw body."""
    if content_type.startswith("multipart/form-data"):
        parts = parse_multipart(body, content_type)
        for name, filename, data in parts:
            if name == "image" or filename:
                return data
        raise ApiError(400, "missing_image", "the form has no file; send the photo in a field named 'image'")
    if not body:
        raise ApiError(400, "missing_image", "empty request; POST a photo as multipart field 'image' "
                                             "or as the raw body with Content-Type image/jpeg")
    return body


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """(field name, filename, data) of every part, parsed in memory (never spooled to disk)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_form", "multipart upload without a boundary")
    parts: list[tuple[str, str, bytes]] = []
    cur: dict[str, Any] = {}

    def header_end() -> None:
        cur["headers"][bytes(cur["field"]).lower()] = bytes(cur["value"])
        cur["field"], cur["value"] = bytearray(), bytearray()

    def part_end() -> None:
        _, disp = parse_options_header(cur["headers"].get(b"content-disposition", b""))
        parts.append((disp.get(b"name", b"").decode(errors="replace"),
                      disp.get(b"filename", b"").decode(errors="replace"), bytes(cur["data"])))

    callbacks = {
        "on_part_begin": lambda: cur.update(headers={}, data=bytearray(), field=bytearray(), value=bytearray()),
        "on_header_field": lambda d, s, e: cur["field"].extend(d[s:e]),
        "on_header_value": lambda d, s, e: cur["value"].extend(d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: cur["data"].extend(d[s:e]),
        "on_part_end": part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's malformed form
        raise ApiError(400, "bad_form", f"malformed multipart form ({exc})") from None
    return parts


# --------------------------------------------------------------------------- the app

class _InFlightLimit:
    """ASGI middleware: at most ``limit`` requests at once, the next answered at once with
    a JSON 503 (uvicorn's own ``limit_concurrency`` answers plain text and counts idle
    keep-alive connections too, so it is left as a looser last guard; see :func:`serve`)."""

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
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1013, "reason": "server busy, try again later"})
            return
        from fastapi.responses import JSONResponse

        error = ApiError(503, "busy", f"the server is handling {self.limit} requests already "
                                      "(its --max-connections); retry in a second")
        await JSONResponse(error.body(), status_code=error.status, headers={"Retry-After": "1"})(scope, receive, send)


def create_app(config: ServeConfig) -> Any:
    """The FastAPI application (models load in its lifespan)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from facelab import __version__

    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.get_running_loop().run_in_executor(None, service.load)
        await service.start()
        log.info("serving %d model(s): %s", len(service.models), ", ".join(service.models))
        yield
        await service.stop()

    app = FastAPI(title="facelab", version=__version__, lifespan=lifespan,
                  description="Face classifiers trained with facelab: upload a photo, get every face "
                              "with each model's probabilities.")
    app.state.service = service
    app.include_router(api_router())

    @app.exception_handler(ApiError)
    async def _api_error(request: Any, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

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

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Content-Type"])
    app.add_middleware(_InFlightLimit, limit=config.max_in_flight)  # outermost: refuses before any work
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
        service = service_of(request)
        return {"status": "ok", "models": list(service.models),
                "batching": {n: m.batcher.stats.to_dict() for n, m in service.models.items()}}

    @router.get("/api/models", tags=["predict"])
    async def models(request: Request) -> dict[str, Any]:
        """The loaded models: task, labels, thresholds, backend, input size, detector."""
        service = service_of(request)
        check_key(service.config, _key_of(request))
        return {"models": [m.info() for m in service.models.values()]}

    @router.post("/api/predict", tags=["predict"], openapi_extra=upload_doc)
    async def predict(request: Request, models: str | None = Query(
            None, description="Comma-separated model names (default: all)")) -> dict[str, Any]:
        """A photo (multipart field ``image``, or the raw body) -> every face with its box,
        landmarks and each selected model's probabilities and decision."""
        service = service_of(request)
        check_key(service.config, _key_of(request))
        chosen = service.select(models)

        async def work() -> dict[str, Any]:
            body = await read_body(request, service.config.max_upload_bytes + 64 * 1024)
            data = image_from_request(body, request.headers.get("content-type", ""))
            return await service.analyse(data, chosen)

        return await _with_timeout(work(), service.config.request_timeout)

    @router.websocket("/api/stream")
    async def stream(ws: WebSocket) -> None:
        """Live video: send JPEG frames as binary messages, get one JSON answer per frame
        (send the next frame after the answer). A text message ``{"models": [..]}``
        changes the models."""
        service: Service = ws.app.state.service
        await ws.accept()
        try:
            check_key(service.config, ws.query_params.get("api_key") or ws.headers.get("x-api-key"))
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


async def _stream_message(service: Service, chosen: list[LoadedModel], msg: dict) -> tuple[list, dict]:
    try:
        if msg.get("text") is not None:
            wanted = json.loads(msg["text"]).get("models") or []
            chosen = service.select(",".join(wanted))
            return chosen, {"models": [m.name for m in chosen]}
        answer = await _with_timeout(service.analyse(msg.get("bytes") or b"", chosen),
                                     service.config.request_timeout)
        return chosen, answer
    except ApiError as exc:
        return chosen, exc.body()
    except ValueError as exc:
        return chosen, ApiError(400, "bad_message", str(exc)).body()


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


def check_key(config: ServeConfig, given: str | None) -> None:
    """401 unless the API key matches (constant-time compare); no-op when no key is set."""
    if config.api_key is None:
        return
    if not given or not hmac.compare_digest(given.encode(), config.api_key.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong API key; send it in the X-API-Key header "
                                            "(WebSocket: ?api_key=...)")


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          access_log: bool = False, workers: int = 1) -> None:
    """Run the app with uvicorn until interrupted (one line per request only with
    ``access_log``: at a hundred requests a second the log costs CPU and says little).

    ``config.max_in_flight`` limits requests in the app (JSON 503); uvicorn's own limit,
    which also counts idle keep-alive connections and answers in plain text, is set well
    above it (2x + 16) so that it only guards against a flood of idle connections.

    ``workers`` > 1 starts that many server processes on the same port, each loading the
    models in its own lifespan: face detection holds Python's GIL, so one process keeps
    about one core busy however many threads it has."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    uvicorn = _require_uvicorn()
    options = dict(host=host, port=port, log_level=log_level, timeout_keep_alive=10,
                   limit_concurrency=2 * config.max_in_flight + 16, ws_max_size=config.max_upload_bytes + 4096,
                   access_log=access_log)
    if workers == 1:
        uvicorn.run(create_app(config), **options)
        return
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, **options)


def app_from_env() -> Any:
    """The app of one worker process (``serve(workers=N)``): its config comes from the
    environment variable ``FACELAB_SERVE_CONFIG`` (JSON of :class:`ServeConfig`)."""
    data = json.loads(os.environ[CONFIG_ENV])
    data["runs"], data["cors_origins"] = tuple(data["runs"]), tuple(data["cors_origins"])
    return create_app(ServeConfig(**data))


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
