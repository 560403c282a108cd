"""Atomic file writes and hashing: a crash never leaves a half-written output behind."""
from __future__ import annotations

import contextlib
import hashlib
import json
import itertools
import os
import threading
from pathlib import Path
from typing import Any, Iterator


_TMP_COUNTER = itertools.count()


def _tmp_name(path: Path) -> Path:
    """A temp name beside ``path``, unique per process, thread and call (no random probing:
    this runs once per crop, and ``mkstemp`` costs several times the write itself)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_TMP_COUNTER)}.tmp")


def _mkdir_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be: say which
        raise NotADirectoryError(f"{path.parent} exists and is not a folder") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The rename is atomic on POSIX, so readers see either the old or the new file.
    """
    path = Path(path)
    _mkdir_parent(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """``data`` into ``path`` atomically (temp file + rename), with a plain ``open``'s
    permissions (0666 less the umask)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileNotFoundError:
        _mkdir_parent(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """``dst`` becomes a hard link to ``src`` (no bytes copied; atomic: link to a temp name,
    then rename), or an atomic copy where links are impossible (another file system)."""
    dst = Path(dst)
    tmp = _tmp_name(dst)
    try:
        try:
            os.link(src, tmp)
        except FileNotFoundError:
            if not Path(src).exists():
                raise
            _mkdir_parent(dst)
            os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not Path(src).exists():
            raise
        return write_bytes(dst, Path(src).read_bytes())  # EXDEV, EPERM, no link support
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dst


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_torch(path: str | os.PathLike[str], obj: Any) -> Path:
    """torch.save through a temp file + rename (a kill -9 mid-write keeps the old file)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
