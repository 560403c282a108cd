"""Connection guard: slow or idle clients cannot lock the server out.

uvicorn keeps a connection that never finishes its request head open for ever, and its
``limit_concurrency`` counts such idle connections, then answers plain-text 503 to
everyone. This module replaces both with a guard around uvicorn's own HTTP protocol
(:class:`GuardedHttpTools`, or :class:`GuardedH11` without httptools), which tracks every
connection of the process in one of three states:

* **fresh**: connected, its first request head not complete yet;
* **kept**: served at least once, now between requests (keep-alive) or sending the next
  request head;
* **active**: a request is being handled (its head is parsed; the app has it).

and enforces:

* ``header_timeout``: a request head must be complete within this many seconds of the
  connection opening (fresh) or of its first byte (kept); otherwise ``408`` and close;
* ``body_timeout``: while the app waits for the request body, a pause longer than this
  between two pieces closes the connection (a paused read, when the app is busy, does
  not count);
* ``max_idle``: at most this many fresh + kept connections at once; one more closes the
  oldest idle one, fresh (never served) connections before kept ones but never the one
  just opened, so an idle flood evicts itself, clients that were served keep their
  connections, and connections parked on keep-alive cannot lock new clients out;
* ``max_header_bytes``: a request head larger than this is answered ``431`` and closed.

Active requests are bounded by the app (``max_in_flight``), so the connections a process
holds are bounded too, and ``/healthz`` is always reached. The limits are per process
(each ``--workers`` process has its own); :func:`configure` sets them before the server
starts (``create_app`` does).
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardLimits:
    """The guard's limits (copied from :class:`facelab.serve.app.ServeConfig`)."""

    header_timeout: float = 10.0
    """Seconds to send a whole request head (fresh: from connecting; kept: from its first byte)."""
    body_timeout: float = 10.0
    """Longest pause in seconds between two pieces of a request body the app waits for."""
    max_idle: int = 1024
    """Most fresh + kept connections at once; one more closes the oldest idle one."""
    max_header_bytes: int = 32 * 1024
    """Largest request head in bytes (431 above)."""


@dataclass
class GuardStats:
    """What the guard did (shown by ``/healthz``)."""

    opened: int = 0
    closed_idle_cap: int = 0
    closed_header_timeout: int = 0
    closed_body_timeout: int = 0
    closed_header_too_large: int = 0


_REJECT = {408: b"HTTP/1.1 408 Request Timeout\r\n", 431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n"}


def _reject(transport: Any, status: int, code: str, message: str) -> None:
    """Answer a JSON error and close (the connection's request never reached the app)."""
    body = ('{"error":{"code":"%s","message":"%s"}}' % (code, message)).encode()
    transport.write(_REJECT[status] + b"content-type: application/json\r\nconnection: close\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    transport.close()


class ConnectionGuard:
    """The registry of one process's HTTP connections (see the module docstring)."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.stats = GuardStats()
        self.fresh: OrderedDict[Any, float] = OrderedDict()  # protocol -> opened at
        self.kept: OrderedDict[Any, float] = OrderedDict()   # protocol -> idle since
        self.active: set[Any] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ transitions
    def opened(self, conn: Any) -> None:
        self.stats.opened += 1
        now = time.monotonic()
        conn._fl_head_since = now
        conn._fl_head_bytes = 0
        self.fresh[conn] = now
        self._evict_over_cap(newcomer=conn)
        self._tick_soon()

    def forget(self, conn: Any) -> None:
        self.fresh.pop(conn, None)
        self.kept.pop(conn, None)
        self.active.discard(conn)

    def head_data(self, conn: Any, n: int) -> None:
        """Bytes of a request head arrived on an idle connection."""
        if conn in self.kept and conn._fl_head_since is None:
            conn._fl_head_since = time.monotonic()
        conn._fl_head_bytes += n

    def started(self, conn: Any) -> None:
        """A request head is complete: the app has the request."""
        self.fresh.pop(conn, None)
        self.kept.pop(conn, None)
        self.active.add(conn)
        conn._fl_head_since, conn._fl_head_bytes = None, 0
        conn._fl_body_at = time.monotonic()

    def finished(self, conn: Any) -> None:
        """The response is complete and no pipelined request follows: idle (kept)."""
        self.active.discard(conn)
        conn._fl_head_since, conn._fl_head_bytes = None, 0
        self.kept[conn] = time.monotonic()
        self.kept.move_to_end(conn)
        self._evict_over_cap()

    # ------------------------------------------------------------------ enforcement
    def _evict_over_cap(self, newcomer: Any = None) -> None:
        """Close idle connections down to the cap: the oldest fresh one (never the one
        just opened: a new client always gets its chance), else the oldest kept one (so
        connections parked on keep-alive cannot lock new clients out either)."""
        while len(self.fresh) + len(self.kept) > self.limits.max_idle:
            victim = next((c for c in self.fresh if c is not newcomer), None)
            if victim is not None:
                del self.fresh[victim]
            elif self.kept:
                victim, _ = self.kept.popitem(last=False)
            else:
                return
            self.stats.closed_idle_cap += 1
            victim.transport.close()

    def _tick_soon(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            step = max(0.05, min(1.0, self.limits.header_timeout / 4, self.limits.body_timeout / 4))
            self._timer = loop.call_later(step, self._tick, step)

    def _tick(self, step: float) -> None:
        self._timer = None
        now = time.monotonic()
        late = now - self.limits.header_timeout
        for conn, since in list(self.fresh.items()):
            if since > late:
                break  # ordered by opening time: the rest are younger
            self._time_out_head(conn)
        for conn in [c for c in self.kept if c._fl_head_since is not None and c._fl_head_since <= late]:
            self._time_out_head(conn)
        stalled = now - self.limits.body_timeout
        for conn in list(self.active):
            if conn._fl_body_pending() and not conn.flow.read_paused and conn._fl_body_at <= stalled:
                self.active.discard(conn)
                self.stats.closed_body_timeout += 1
                conn.transport.close()
        if self.fresh or self.kept or self.active:
            self._timer = asyncio.get_running_loop().call_later(step, self._tick, step)

    def _time_out_head(self, conn: Any) -> None:
        self.forget(conn)
        self.stats.closed_header_timeout += 1
        _reject(conn.transport, 408, "header_timeout",
                f"the request head did not arrive within {self.limits.header_timeout:g} s")

    def too_large(self, conn: Any) -> None:
        self.forget(conn)
        self.stats.closed_header_too_large += 1
        _reject(conn.transport, 431, "header_too_large",
                f"the request head is larger than {self.limits.max_header_bytes} bytes")

    def to_dict(self) -> dict[str, Any]:
        return {"fresh": len(self.fresh), "kept": len(self.kept), "active": len(self.active),
                **asdict(self.stats), "limits": asdict(self.limits)}


_GUARD: ConnectionGuard | None = None


def configure(limits: GuardLimits) -> ConnectionGuard:
    """Set this process's limits (before the server accepts connections)."""
    global _GUARD
    _GUARD = ConnectionGuard(limits)
    return _GUARD


def current() -> ConnectionGuard:
    global _GUARD
    if _GUARD is None:
        _GUARD = ConnectionGuard(GuardLimits())
    return _GUARD


class _GuardMixin:
    """Hooks of the guard around a uvicorn HTTP protocol (httptools or h11): both keep the
    request in ``self.cycle`` and call ``on_response_complete``."""

    transport: Any
    cycle: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._fl_cycle = None
        self._fl_body_at = 0.0
        self._fl_message_done: bool | None = None  # httptools only: the request body is all in
        current().opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        current().forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        guard = current()
        idle = self in guard.fresh or self in guard.kept
        if idle:
            guard.head_data(self, len(data))
        else:
            self._fl_body_at = time.monotonic()
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket: the app holds it now
            guard.forget(self)
            return
        if self.cycle is not None and self.cycle is not self._fl_cycle:
            self._fl_cycle = self.cycle
            guard.started(self)
        elif idle and self._fl_head_bytes > guard.limits.max_header_bytes:
            guard.too_large(self)

    def on_message_begin(self) -> None:  # httptools parser callback
        self._fl_message_done = False
        super().on_message_begin()  # type: ignore[misc]

    def on_message_complete(self) -> None:  # httptools parser callback
        super().on_message_complete()  # type: ignore[misc]
        self._fl_message_done = True
        self._idle_if_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._idle_if_done()

    def _idle_if_done(self) -> None:
        """Idle once the response is sent and the request body is all in (an answer sent
        before the body was read, a 401 or 503, leaves the rest of it arriving: those bytes
        are not the next request's head)."""
        if (not self.transport.is_closing() and self.cycle is not None and self.cycle.response_complete
                and self._fl_message_done is not False and self in current().active):
            current().finished(self)

    def _fl_body_pending(self) -> bool:
        """The request body is still arriving (h11: judged from uvicorn's cycle)."""
        if self._fl_message_done is not None:
            return not self._fl_message_done
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_complete


from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402


class GuardedH11(_GuardMixin, H11Protocol):
    """uvicorn's h11 protocol with the connection guard."""


def protocol_class() -> type:
    """The guarded uvicorn HTTP protocol class (httptools when installed, else h11)."""
    return _GUARDED_HTTPTOOLS or GuardedH11


_GUARDED_HTTPTOOLS: type | None = None
if importlib.util.find_spec("httptools") is not None:  # part of uvicorn[standard]
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpTools(_GuardMixin, HttpToolsProtocol):
        """uvicorn's httptools protocol with the connection guard."""

    _GUARDED_HTTPTOOLS = GuardedHttpTools
