"""How ``facelab serve`` runs: :class:`ServeConfig` and the API key's digest (:class:`ApiKey`)."""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from facelab.errors import ConfigError

API_KEY_ENV = "FACELAB_API_KEY"


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
            raise ConfigError("serve needs at least one run folder")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        for name in ("max_upload_bytes", "max_pixels", "max_batch", "max_faces", "max_in_flight",
                     "keep_alive_timeout", "max_idle_connections", "max_header_bytes", "max_form_parts",
                     "max_part_header_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout", "header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.threads < 0 or self.model_threads < 0:
            raise ConfigError("max_wait_ms, threads and model_threads must be >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty (--api-key '' or FACELAB_API_KEY=); give a real key, "
                             "or unset it to run without authentication")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()
                                             and self.api_key == self.api_key.strip()):
            raise ConfigError("the API key must be printable ASCII without leading or trailing spaces "
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

