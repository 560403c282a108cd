"""Uploads of ``facelab serve``: the photo of a request, read into memory (never spooled
to disk) with size caps, and an incremental multipart parser that stops at its limits.

Why not Starlette's form parser: it spools large files to a temporary file (faces are
biometric data: uploads never touch the disk) and parses on the event loop. This one runs
in worker threads and stops at the ``max_form_parts + 1``-th part, so a body of many tiny
parts is refused after its first piece while ``/healthz`` keeps answering (measured by
bench/attack.py; docs/serve.md)."""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable

from facelab.serve.errors import FORM_OVERHEAD, ApiError, too_large
from facelab.serve.settings import ServeConfig


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


async def read_upload(request: Any, config: ServeConfig, pool: Executor | None) -> bytes:
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
            raise too_large(int(declared), limit)
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_large(size, limit, more=True)
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
    return check_size(image_of_form(await loop.run_in_executor(pool, form.finish)), limit)


def check_size(data: bytes, limit: int) -> bytes:
    """``data``, or a 413 ``upload_too_large`` when it is over ``limit`` bytes (a form's
    photo, which may arrive with up to ``FORM_OVERHEAD`` more bytes of form; a video frame)."""
    if len(data) > limit:
        raise too_large(len(data), limit)
    return data

