"""The JSON error answers of ``facelab serve`` (:class:`ApiError`) and the ones that
several modules raise (an upload too large, an image that cannot be decoded)."""
from __future__ import annotations

from typing import Any

from facelab.images import ImageError


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.close = False
        """Close the connection after the answer (the rest of the request body is not read)."""

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


ACCEPTED = "JPEG, PNG, WebP, BMP or GIF (first frame)"
"""The upload formats in words (:data:`facelab.images.UPLOAD_FORMATS`)."""


def image_error(exc: ImageError) -> ApiError:
    if exc.reason.startswith("too large"):
        return ApiError(413, "image_too_large", f"image {exc.reason}")
    if exc.reason.startswith("unsupported format"):
        return ApiError(415, "unsupported_format", f"the upload is in an {exc.reason}; send a {ACCEPTED} photo")
    if exc.reason.startswith("not an image") or exc.reason.startswith("empty"):
        return ApiError(415, "not_an_image", f"the upload is {exc.reason}; send a {ACCEPTED} photo")
    return ApiError(400, "bad_image", f"the upload could not be decoded: {exc.reason}")


FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body may carry beyond ``max_upload_bytes`` (boundaries, part headers):
the limit quoted is always ``max_upload_bytes``."""


def too_large(n: int, limit: int, more: bool = False) -> ApiError:
    size = f"more than {limit} bytes" if more else f"{n} bytes"
    return ApiError(413, "upload_too_large", f"the upload ({size}) is larger than the server's limit of "
                                             f"{limit} bytes ({limit / 2 ** 20:g} MB, --max-upload-mb)")

