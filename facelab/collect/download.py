"""One URL -> checked image bytes, on httpx.

Safety properties (tests/test_collect.py): redirects are followed only to http(s) addresses
(each hop checked here: httpx is told not to follow them itself); a body larger than
``max_bytes`` is abandoned while it streams (a ``Content-Length`` over the limit before it
starts); every request has a timeout for connecting and each read, and the whole answer a
deadline; transient failures (timeouts, connection errors, HTTP 408/425/429/5xx) are retried
with exponential backoff, anything else is final; the bytes must decode as an image within
the pixel limits, with a shorter side of at least ``min_side``.
"""
from __future__ import annotations

import hashlib
import io
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from facelab._phash import Fingerprint, fingerprint
from facelab.collect.config import CollectConfig
from facelab.images import ImageError, decode_image

if TYPE_CHECKING:  # imported where used: ~0.1 s that `facelab --help` need not pay
    import httpx

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
               "TIFF": ".tif", "PPM": ".ppm"}
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 10
"""Hops followed before a URL is rejected (urllib's limit, which collect used before httpx)."""


@dataclass
class Fetched:
    """A worker's result: the checked bytes, or why there are none."""

    data: bytes = b""
    ext: str = ""
    sha256: str = ""
    fp: Fingerprint | None = None
    status: str = ""
    reason: str = ""


class _Reject(Exception):
    """A permanent failure (do not retry)."""


class _Transient(Exception):
    """A failure worth retrying (timeouts, connection errors, 429/5xx)."""


@contextmanager
def client_for(config: CollectConfig) -> Iterator[httpx.Client]:
    """One httpx client for a run (connections are kept alive and shared by the worker
    threads); redirects are not followed by httpx but by :func:`_get`, hop by hop."""
    import httpx

    limits = httpx.Limits(max_connections=2 * config.workers, max_keepalive_connections=config.workers)
    with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(config.timeout), limits=limits,
                      headers={"User-Agent": config.user_agent, "Accept": "image/*"}) as client:
        yield client


def _get(url: str, config: CollectConfig, client: httpx.Client) -> bytes:
    """The body of ``url`` after at most :data:`MAX_REDIRECTS` http(s) redirects."""
    import httpx

    deadline = time.monotonic() + config.timeout
    try:
        for _ in range(MAX_REDIRECTS + 1):
            with client.stream("GET", url) as resp:
                if not resp.is_redirect:
                    return _body(resp, config, deadline)
                url = _next_hop(resp)
        raise _Reject(f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException:
        raise _Transient(f"timed out after {config.timeout:g} s") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise _Reject(f"not an http(s) address ({exc})") from None
    except httpx.DecodingError as exc:
        raise _Reject(f"corrupt response ({exc})") from None
    except (httpx.TransportError, OSError) as exc:
        raise _Transient(f"connection failed ({exc})") from None


def _next_hop(resp: httpx.Response) -> str:
    """Where a redirect leads, if it is an http(s) address."""
    target = resp.url.join(resp.headers["Location"])
    if target.scheme not in ("http", "https"):
        raise _Reject(f"HTTP {resp.status_code} redirect to a non-http(s) address ({target.scheme}:), not followed")
    return str(target)


def _body(resp: httpx.Response, config: CollectConfig, deadline: float) -> bytes:
    """An answer's body: an error status, a web page or an oversized body is refused."""
    if resp.status_code >= 400:
        failure = _Transient if resp.status_code in _RETRY_STATUS else _Reject
        raise failure(f"HTTP {resp.status_code} {resp.reason_phrase}")
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
        raise _Reject(f"not an image: the server sent {ctype} (a web page, not a photo)")
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > config.max_bytes:
        raise _Reject(f"too large: {int(length) / 1e6:.1f} MB (limit {config.max_bytes / 1e6:.1f} MB)")
    chunks, size = [], 0
    for block in resp.iter_bytes(1 << 16):  # decoded: a compressed bomb stops at max_bytes too
        size += len(block)
        if size > config.max_bytes:
            raise _Reject(f"too large: over {config.max_bytes / 1e6:.1f} MB")
        if time.monotonic() > deadline:
            raise _Transient(f"timed out after {config.timeout:g} s (body still arriving)")
        chunks.append(block)
    return b"".join(chunks)


def _check(data: bytes, url: str, config: CollectConfig) -> Fetched:
    from PIL import Image

    try:
        rgb = decode_image(data, name=url, max_pixels=config.max_pixels)
    except ImageError as exc:
        raise _Reject(exc.reason) from None
    h, w = rgb.shape[:2]
    if min(h, w) < config.min_side:
        raise _Reject(f"too small: {w}x{h} (shorter side below {config.min_side} px)")
    with Image.open(io.BytesIO(data)) as img:
        ext = _EXTENSIONS.get(img.format or "", ".jpg")
    return Fetched(data=data, ext=ext, sha256=hashlib.sha256(data).hexdigest(), fp=fingerprint(rgb))


def fetch(url: str, config: CollectConfig, client: httpx.Client | None = None) -> Fetched:
    """Download and check one URL, retrying transient failures with exponential backoff.
    ``client``: the run's (:func:`client_for`); None opens one for this URL."""
    if client is None:
        with client_for(config) as own:
            return fetch(url, config, own)
    attempt = 0
    while True:
        try:
            return _check(_get(url, config, client), url, config)
        except _Reject as exc:
            return Fetched(status="rejected", reason=str(exc))
        except _Transient as exc:
            if attempt >= config.retries:
                tries = f" ({attempt + 1} attempts)" if attempt else ""
                return Fetched(status="failed", reason=f"{exc}{tries}")
            time.sleep(config.backoff * (2 ** attempt))
            attempt += 1
