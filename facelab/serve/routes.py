"""The routes of ``facelab serve``: ``GET /healthz``, ``GET /api/models``, ``POST
/api/predict`` and ``WS /api/stream``.

What a route needs comes from FastAPI dependencies, so tests can replace any of them with
``app.dependency_overrides``: :func:`get_service` (the loaded models), :func:`get_settings`
(the :class:`ServeConfig`), :func:`get_key` (the API key's digest) and :func:`require_key`
(the check on ``/api/*`` HTTP routes). The WebSocket checks its key itself: a refused
stream gets a JSON error message and close code 1008, which a dependency cannot send.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from starlette.requests import HTTPConnection

from facelab.serve import guard
from facelab.serve.auth import check_key, key_of, refuse_key_in_url, ws_key, ws_subprotocol
from facelab.serve.errors import ApiError
from facelab.serve.service import LoadedModel, Service
from facelab.serve.settings import ApiKey, ServeConfig
from facelab.serve.uploads import check_size, read_upload

log = logging.getLogger(__name__)

UPLOAD_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
"""The upload as the OpenAPI schema shows it (the body is read by :func:`read_upload`, not
declared as a FastAPI parameter)."""


async def get_service(conn: HTTPConnection) -> Service:
    """The loaded models (``app.state.service``)."""
    service: Service = conn.app.state.service
    return service


async def get_settings(conn: HTTPConnection) -> ServeConfig:
    """The server's settings (``app.state.settings``)."""
    settings: ServeConfig = conn.app.state.settings
    return settings


async def get_key(conn: HTTPConnection) -> ApiKey | None:
    """The API key's digest (``app.state.key``); None: no authentication."""
    key: ApiKey | None = conn.app.state.key
    return key


async def require_key(request: Request, key: ApiKey | None = Depends(get_key)) -> None:
    """401 unless the request carries the API key in a header (a key in the URL is refused)."""
    refuse_key_in_url(request.query_params)
    check_key(key, key_of(request))


def api_router() -> APIRouter:
    """The ``/api`` routes and ``/healthz``."""
    router = APIRouter()
    router.add_api_route("/healthz", healthz, methods=["GET"], tags=["service"])
    router.add_api_route("/api/models", models, methods=["GET"], tags=["predict"],
                         dependencies=[Depends(require_key)])
    router.add_api_route("/api/predict", predict, methods=["POST"], tags=["predict"], openapi_extra=UPLOAD_DOC,
                         dependencies=[Depends(require_key)])
    router.add_api_websocket_route("/api/stream", stream)
    return router


async def healthz(service: Service = Depends(get_service)) -> dict[str, Any]:
    """Liveness: which models are loaded and how batching went so far."""
    return {"status": "ok", **service.health(), "connections": guard.current().to_dict()}


async def models(service: Service = Depends(get_service)) -> dict[str, Any]:
    """The loaded models: task, labels, thresholds, backend, input size, detector."""
    return {"models": [m.info() for m in service.models.values()]}


async def predict(request: Request, models: str | None = Query(None, description="Comma-separated model names "
                                                                                 "(default: all)"),
                  service: Service = Depends(get_service),
                  settings: ServeConfig = Depends(get_settings)) -> dict[str, Any]:
    """A photo (multipart field ``image``, or the raw body) -> every face with its box,
    landmarks and each selected model's probabilities and decision."""
    chosen = service.select(models)

    async def work() -> dict[str, Any]:
        data = await read_upload(request, settings, service.form_pool)
        return await service.analyse(data, chosen)

    result: dict[str, Any] = await with_timeout(work(), settings.request_timeout)
    return result


async def stream(ws: WebSocket, service: Service = Depends(get_service),
                 settings: ServeConfig = Depends(get_settings), key: ApiKey | None = Depends(get_key)) -> None:
    """Live video: send JPEG frames as binary messages, get one JSON answer per frame
    (send the next frame after the answer). A text message ``{"models": [..]}``
    changes the models. The API key comes in the ``X-API-Key`` (or ``Authorization:
    Bearer``) header or as the subprotocol ``facelab.key.<base64url of the key>`` (what
    a browser can send), never in the URL."""
    await ws.accept(subprotocol=ws_subprotocol(ws.scope))
    try:
        refuse_key_in_url(ws.query_params)
        check_key(key, key_of(ws) or ws_key(ws.scope))
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
            chosen, answer = await _stream_message(service, settings, chosen, msg)
            await ws.send_json(answer)
    except WebSocketDisconnect:
        pass


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


async def _stream_message(service: Service, settings: ServeConfig, chosen: list[LoadedModel],
                          msg: Any) -> tuple[list[LoadedModel], dict[str, Any]]:
    """One message of a stream -> (the models now chosen, the answer to send)."""
    try:
        if msg.get("text") is not None:
            chosen = service.select(_models_in(msg["text"]))
            return chosen, {"models": [m.name for m in chosen]}
        frame = check_size(msg.get("bytes") or b"", settings.max_upload_bytes)
        answer = await with_timeout(service.analyse(frame, chosen), settings.request_timeout)
        return chosen, answer
    except ApiError as exc:
        return chosen, exc.body()
    except Exception:  # noqa: BLE001 - one bad frame must not end the stream
        log.exception("stream frame failed")
        return chosen, ApiError(500, "internal_error", "the server failed on this frame; see its log").body()


async def with_timeout(coro: Any, seconds: float) -> Any:
    """``coro``'s result, or a 504 ``timeout`` after ``seconds`` (``coro`` is then cancelled:
    its queued detection and its crops waiting for a batch are dropped)."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"the request took longer than the server's limit of {seconds:g} s "
                                       "(server busy or a very large photo); try again, or start the "
                                       "server with a larger --timeout") from None
