"""Log lines of ``facelab serve`` never carry a query string.

uvicorn logs the path *with its query* of every WebSocket handshake at INFO (even with
the access log off) and of every request in the access log; a query may hold a secret a
client put there (``?api_key=...``). :class:`NoQueryFilter` sits on every handler of
uvicorn's logging config (:func:`log_config`, also used by ``--workers`` processes, which
configure their logging from it) and on the root logger's handlers, and cuts the query
off any path or URL in a record before it is formatted.
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Any

LEVELS = ("critical", "error", "warning", "info", "debug")
"""Log levels ``facelab serve`` accepts (uvicorn's ``trace`` prints headers: refused)."""

_QUERY = re.compile(r"((?:https?|wss?)://[^\s\"'?]*|/[^\s\"'?]*)\?[^\s\"']*")


def strip_query(text: str) -> str:
    """``GET /api/stream?api_key=x HTTP/1.1`` -> ``GET /api/stream?[query hidden] HTTP/1.1``."""
    return _QUERY.sub(r"\1?[query hidden]", text)


class NoQueryFilter(logging.Filter):
    """Removes query strings from a record's message and arguments (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = strip_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(strip_query(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: strip_query(v) if isinstance(v, str) and "?" in v else v
                           for k, v in record.args.items()}
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's default logging config with :class:`NoQueryFilter` on each handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["no_query"] = {"()": f"{__name__}.NoQueryFilter"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "no_query"]
    return config


def install_on_root() -> None:
    """The filter on the root logger's handlers too (facelab's own log lines)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, NoQueryFilter) for f in handler.filters):
            handler.addFilter(NoQueryFilter())
