"""How ``facelab serve`` runs: :class:`ServeConfig` (pydantic-settings: every field can also
come from an environment variable ``FACELAB_<FIELD>``) and the API key's digest (:class:`ApiKey`).

``--workers`` processes get their settings as those variables (:meth:`ServeConfig.to_env`),
the API key as its salted digest only: the key itself never reaches a child process, and
printing the settings shows ``**********`` for it."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from facelab.errors import ConfigError
from facelab.predict import BACKENDS
from facelab.serve.guard import GuardLimits
from facelab.serve.logs import LEVELS

ENV_PREFIX = "FACELAB_"
API_KEY_ENV = f"{ENV_PREFIX}API_KEY"
DIGEST_ENV = f"{ENV_PREFIX}API_KEY_DIGEST"
COUNTS = ("max_batch", "max_faces", "max_in_flight", "keep_alive_timeout", "max_idle_connections", "max_header_kb",
          "max_form_parts", "max_part_header_bytes")
"""Settings that must be >= 1."""
POSITIVE = ("max_upload_mb", "max_megapixels", "request_timeout", "header_timeout", "body_timeout")
"""Settings that must be > 0."""


class ServeConfig(BaseSettings):
    """How ``facelab serve`` runs. Given values win over ``FACELAB_<FIELD>`` environment
    variables, which win over the defaults (tuples in the environment are JSON lists)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, use_attribute_docstrings=True,
                                      extra="forbid")

    runs: tuple[str, ...] = ()
    """Run (or bundle) folders to serve; each becomes a model named after its folder."""
    backend: str = "auto"
    """``auto`` (ONNX Runtime when the run exports), ``onnx`` or ``torch``."""
    max_upload_mb: float = 10.0
    """Largest accepted upload / video frame in MiB (413 above)."""
    max_megapixels: float = 40.0
    """Largest accepted image in megapixels (413 above; guards against decompression bombs)."""
    request_timeout: float = 30.0
    """Seconds a request may take, upload included (504 ``timeout`` after). Its queued
    detection and its crops waiting for a batch are then dropped, not computed."""
    api_key: SecretStr | None = None
    """When set, ``/api/*`` needs it in header ``X-API-Key`` or ``Authorization: Bearer``
    (WebSocket: those headers, or the subprotocol ``facelab.key.<base64url of the key>``).
    A key in a URL is refused; an empty key is an error, not "authentication off". Better
    given as ``FACELAB_API_KEY`` than on a command line other users can list. Printed or
    logged, the settings show ``**********``."""
    api_key_digest: str | None = None
    """The API key as its salted SHA-256 digest (``salt:digest`` in hex, :class:`ApiKey`):
    what ``--workers`` processes get instead of the key."""
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
    max_header_kb: int = 32
    """Largest request head (request line + headers) in KiB; 431 above."""
    max_form_parts: int = 8
    """Most parts in a multipart upload (a photo form has one or two); 413 above."""
    max_part_header_bytes: int = 4096
    """Largest headers of one multipart part in bytes; 413 above."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # a value of the wrong type, given or from the environment
            problems = "; ".join(_problem(e) for e in exc.errors())
            raise ConfigError(f"bad serve setting: {problems} (options of `facelab serve`, or environment "
                              f"variables {ENV_PREFIX}<SETTING>)") from None
        self._check()

    def _check(self) -> None:
        if not self.runs:
            raise ConfigError("serve needs at least one run folder")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        for name in COUNTS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.threads < 0 or self.model_threads < 0:
            raise ConfigError("max_wait_ms, threads and model_threads must be >= 0")
        if self.api_key is not None:
            _check_key(self.api_key.get_secret_value())
        if self.api_key is not None and self.api_key_digest:
            raise ConfigError(f"give the API key or its digest ({DIGEST_ENV}), not both")
        if self.api_key_digest:
            ApiKey.decode(self.api_key_digest)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    @property
    def max_header_bytes(self) -> int:
        return self.max_header_kb * 1024

    def key(self) -> ApiKey | None:
        """The API key as a salted digest (None: no authentication)."""
        if self.api_key is not None:
            return ApiKey.of(self.api_key.get_secret_value())
        return ApiKey.decode(self.api_key_digest) if self.api_key_digest else None

    def to_env(self) -> dict[str, str]:
        """These settings as ``FACELAB_<FIELD>`` environment variables (what ``ServeConfig()``
        reads back in a ``--workers`` process): the API key as its salted digest only."""
        key = self.key()
        values = self.model_dump(mode="json", exclude={"api_key", "api_key_digest"})
        env = {f"{ENV_PREFIX}{name.upper()}": v if isinstance(v, str) else json.dumps(v) for name, v in values.items()}
        if key is not None:
            env[DIGEST_ENV] = key.encode()
        return env

    def guard_limits(self) -> GuardLimits:
        return GuardLimits(header_timeout=self.header_timeout, body_timeout=self.body_timeout,
                           max_idle=self.max_idle_connections, max_header_bytes=self.max_header_bytes)


@dataclass(frozen=True)
class ServerOptions:
    """The server processes: where they listen, how many there are, what they log
    (:class:`ServeConfig` is what each of them serves)."""

    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 = every interface)."""
    port: int = 8000
    """TCP port."""
    workers: int = 1
    """Server processes on that port; each loads the models. Face detection holds Python's
    GIL, so one process keeps about one core busy however many threads it has."""
    omp_threads: int = 1
    """OpenMP threads per operation (the server's parallelism comes from concurrent
    requests; more threads fight over the cores)."""
    log_level: str = "info"
    """uvicorn's log level (``trace`` is refused: it prints request headers, keys included)."""
    access_log: bool = False
    """Log one line per request (off by default: at a hundred requests a second the log
    costs CPU and says little)."""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.omp_threads < 1:
            raise ConfigError(f"workers and omp_threads must be >= 1, got {self.workers} and {self.omp_threads}")
        if self.log_level.lower() not in LEVELS:
            raise ConfigError(f"log level {self.log_level!r} is not one of {', '.join(LEVELS)} "
                              "(trace would print request headers, API keys included)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")


def _problem(error: Any) -> str:
    """One pydantic error in words; never the value of a key setting."""
    where = ".".join(map(str, error["loc"]))
    shown = "" if "key" in where else f" (got {error.get('input')!r})"
    return f"{where}: {error['msg']}{shown}"


def _check_key(key: str) -> None:
    if not key.strip():
        raise ConfigError("the API key is empty (--api-key '' or FACELAB_API_KEY=); give a real key, "
                          "or unset it to run without authentication")
    if not (key.isascii() and key.isprintable() and key == key.strip()):
        raise ConfigError("the API key must be printable ASCII without leading or trailing spaces "
                          "(it travels in an HTTP header)")


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
        try:
            salt, digest = text.split(":")
            return cls(bytes.fromhex(salt), bytes.fromhex(digest))
        except ValueError:
            raise ConfigError(f"{DIGEST_ENV} is not a key digest (salt:sha256, both hex); "
                              "unset it, and give the key itself with --api-key or FACELAB_API_KEY") from None

