"""The FastAPI app of ``facelab serve``: JSON API, WebSocket stream, and the web page.

Routes (:mod:`facelab.serve.routes`): ``POST /api/predict`` (an image -> faces with
per-model predictions), ``GET /api/models``, ``WS /api/stream`` (live video frames), ``GET
/healthz``, ``/docs`` (a plain page built from the OpenAPI schema, no scripts), and the page
at ``/`` (static files in ``facelab/serve/static``, no CDN). The models load in the app's
lifespan (:mod:`facelab.serve.service`); uploads are read into memory with size caps
(:mod:`facelab.serve.uploads`); connections are watched by :mod:`facelab.serve.guard`
(slow and idle clients), and API keys never travel in URLs nor reach logs
(:mod:`facelab.serve.auth`, :mod:`facelab.serve.logs`).

The names other modules and tests import from here (``ServeConfig``, ``create_app``,
``serve``, ``ApiError``, ...) are re-exported from the modules that now hold them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator

from facelab import __version__, templates
from facelab._deps import require
from facelab.serve import guard, logs
from facelab.serve.auth import check_key
from facelab.serve.errors import ACCEPTED, FORM_OVERHEAD, ApiError
from facelab.serve.middleware import InFlightLimit, SecurityHeaders
from facelab.serve.service import LoadedModel, Service, _iou, batch_fn
from facelab.serve.settings import API_KEY_ENV, DIGEST_ENV, ApiKey, ServeConfig, ServerOptions
from facelab.serve.uploads import FormParser, image_of_form, parse_multipart, read_upload

__all__ = ["ACCEPTED", "API_KEY_ENV", "ApiError", "ApiKey", "FORM_OVERHEAD", "FormParser", "LoadedModel",
           "ServeConfig", "ServerOptions", "Service", "_batch_fn", "_iou", "app_from_env", "check_key", "create_app",
           "image_of_form", "parse_multipart", "read_upload", "serve"]

_batch_fn = batch_fn  # the name tests/test_people.py imports

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _docs_page(app: Any) -> str:
    """``/docs``: the routes from the OpenAPI schema as plain HTML (no scripts, no CDN;
    ``templates/serve_docs.html``, autoescaped)."""
    routes = [{"method": method.upper(), "path": path, "params": ", ".join(p["name"] for p in op.get("parameters", [])),
               "what": f"{op.get('summary', '')}: {op.get('description', '')}"}
              for path, ops in app.openapi()["paths"].items() for method, op in ops.items()]
    routes.append({"method": "WS", "path": "/api/stream?models=a,b", "params": "models",
                   "what": "Live video: JPEG frames as binary messages, one JSON answer each; key in the "
                           "X-API-Key header or the subprotocol facelab.key.<base64url key>"})
    return templates.render("serve_docs.html", routes=routes)


def create_app(config: ServeConfig, key: ApiKey | None = None) -> Any:
    """The FastAPI application (models load in its lifespan). ``key``: the API key's
    digest, when not the one of ``config`` (:meth:`ServeConfig.key`)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from facelab.serve.routes import api_router  # FastAPI at its top: ALLOWED_LAZY in tests/test_architecture.py

    service = Service(config)
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
    app.state.service, app.state.settings = service, config
    app.state.key = key or config.key()
    app.include_router(api_router())

    @app.exception_handler(ApiError)
    async def _api_error(request: Any, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers={"Connection": "close"} if exc.close else None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, "http_error", str(exc.detail)).body(),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Any, exc: Exception) -> JSONResponse:
        # a bug: still a JSON answer (Starlette then re-raises it, so the server logs the traceback)
        return JSONResponse(ApiError(500, "internal_error", "the server failed on this request; see its log").body(),
                            status_code=500)

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
    app.add_middleware(InFlightLimit, limit=config.max_in_flight)  # refuses before any work
    app.add_middleware(SecurityHeaders)  # outermost: every answer gets the headers, 503s too
    return app



def serve(config: ServeConfig, server: ServerOptions = ServerOptions()) -> None:
    """Run the app with uvicorn until interrupted, as ``server`` says (address, processes,
    logging).

    Connections go through :mod:`facelab.serve.guard` (request-head and body timeouts, a
    cap on idle connections); ``config.max_in_flight`` limits requests in the app (JSON
    503). uvicorn's own ``limit_concurrency``, which counts idle connections too and
    answers everyone in plain text once they fill it, is off. Log lines never carry a
    query string (:mod:`facelab.serve.logs`); ``trace`` logging (which prints headers) is
    refused.

    ``server.workers`` > 1 starts that many server processes on the same port, each loading the
    models in its own lifespan: face detection holds Python's GIL, so one process keeps
    about one core busy however many threads it has. The workers get their settings as
    ``FACELAB_<SETTING>`` environment variables (:meth:`ServeConfig.to_env`, read back by
    pydantic-settings in :func:`app_from_env`) with the API key replaced by its salted
    digest (``FACELAB_API_KEY_DIGEST``); ``FACELAB_API_KEY`` is removed from the
    environment they inherit."""
    os.environ["OMP_NUM_THREADS"] = str(server.omp_threads)  # before the detector's OpenMP runtime loads
    uvicorn = _require_uvicorn()
    config = _fit_open_files(config)
    for name in (API_KEY_ENV, DIGEST_ENV):  # child processes never inherit the key (nor a stale digest)
        os.environ.pop(name, None)
    options = dict(host=server.host, port=server.port, log_level=server.log_level, access_log=server.access_log,
                   timeout_keep_alive=config.keep_alive_timeout, limit_concurrency=None,
                   ws_max_size=config.max_upload_bytes + FORM_OVERHEAD, http=guard.protocol_class(), log_config=logs.log_config(),
                   h11_max_incomplete_event_size=config.max_header_bytes)
    logs.install_on_root()
    if server.workers == 1:
        uvicorn.run(create_app(config), **options)
        return
    os.environ.update(config.to_env())
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=server.workers, **options)


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
        config = config.model_copy(update={"max_idle_connections": fit})
    return config


def app_from_env() -> Any:
    """The app of one worker process (``serve(workers=N)``): its settings come from the
    ``FACELAB_<SETTING>`` environment variables :func:`serve` set (the API key as its
    salted digest ``FACELAB_API_KEY_DIGEST``)."""
    return create_app(ServeConfig())


def _require_uvicorn() -> Any:
    return require("uvicorn", "uvicorn[standard]", "facelab serve")

