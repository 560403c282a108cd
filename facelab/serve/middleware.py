"""ASGI middleware of ``facelab serve``: the in-flight request limit (a JSON 503 ``busy``)
and the security headers on every answer."""
from __future__ import annotations

import logging
from typing import Any, Callable

from facelab.serve.auth import ws_subprotocol
from facelab.serve.errors import ApiError

log = logging.getLogger(__name__)


class InFlightLimit:
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
            await send({"type": "websocket.accept", "subprotocol": ws_subprotocol(scope)})
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


class SecurityHeaders:
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

