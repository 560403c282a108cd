"""The API key of ``facelab serve`` on a request: where it may come from (the ``X-API-Key``
or ``Authorization: Bearer`` header; for a WebSocket also the subprotocol
``facelab.key.<base64url of the key>``, what a browser can send), never from a URL (URLs
get logged), and the constant-time check against the key's digest."""
from __future__ import annotations

import base64
from typing import Any, Mapping

from facelab.serve.errors import ApiError
from facelab.serve.settings import ApiKey

WS_PROTOCOL = "facelab"
WS_KEY_PREFIX = "facelab.key."


def ws_subprotocol(scope: Mapping[str, Any]) -> str | None:
    """``facelab`` when the client offered it (a browser that sends its key as a
    subprotocol must get one of its offers back), else none."""
    return WS_PROTOCOL if WS_PROTOCOL in scope.get("subprotocols", ()) else None


def ws_key(scope: Mapping[str, Any]) -> str | None:
    """The key sent as subprotocol ``facelab.key.<base64url, no padding>``."""
    for proto in scope.get("subprotocols", ()):
        if proto.startswith(WS_KEY_PREFIX):
            code = proto[len(WS_KEY_PREFIX):]
            try:
                return base64.urlsafe_b64decode(code + "=" * (-len(code) % 4)).decode()
            except ValueError:
                return None
    return None


def key_of(request: Any) -> str | None:
    """The key of the ``X-API-Key`` header, else of ``Authorization: Bearer``."""
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


def refuse_key_in_url(query: Mapping[str, str]) -> None:
    """401 when a request carries ``api_key`` in its query string: the key would be in
    every log and proxy on the way, so it is refused rather than read."""
    if "api_key" in query:
        raise ApiError(401, "unauthorized", "the API key must not be in the URL (URLs get logged): "
                                            "send it in the X-API-Key header or as the WebSocket "
                                            "subprotocol facelab.key.<base64url of the key>")
