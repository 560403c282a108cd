"""Atomic file writes, hashing, and OS errors in words: a crash never leaves a half-written output behind."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import itertools
import os
import threading
from pathlib import Path
from typing import Any, Iterator


_TMP_COUNTER = itertools.count()
NAME_MAX = 255
"""Longest file name (bytes) on the usual file systems (ext4, XFS, APFS, NTFS in UTF-16 units)."""
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left (or the quota is used up) while writing ``path``: the one error a user
    fixes by freeing space and running the same command again."""

    def __init__(self, path: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None,
                 advice: str = "") -> None:
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.path = Path(path)
        self.folder = Path(folder) if folder is not None else self.path.parent
        self.advice = advice or "free some space (or choose a folder on another disk) and run the same command again"

    def __str__(self) -> str:
        return f"disk full writing to {self.folder} (no space left for {self.path.name}); {self.advice}"

    def __reduce__(self):  # noqa: ANN204 - pickled back from worker processes
        return (type(self), (str(self.path), str(self.folder), self.advice))

    def within(self, folder: str | os.PathLike[str], advice: str) -> "DiskFullError":
        """The same error told about the folder the user named (not a sub-folder of it)."""
        return DiskFullError(self.path, folder, advice)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in _DISK_FULL)


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside the block into :class:`DiskFullError` for ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(path) from exc
        raise


def os_reason(exc: OSError, explain_loops: bool = True) -> str:
    """Why a file could not be read, in a few words (a report row, an ImageError's reason):
    the one mapping from OS errors to reasons (prepare, inspect, ``images.read_bytes``).

    ``explain_loops=False`` keeps the system's own words for a symbolic link loop ("cannot
    be read (Too many levels of symbolic links)"): predict's table has shown those since
    issue 13 and tests/test_predict_paths.py pins them."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP and explain_loops:
        return "symbolic link loop (the link leads back to itself)"
    return f"cannot be read ({exc.strerror or exc})"


def os_hint(exc: OSError) -> str:
    """What to do about :func:`os_reason`'s cause, where there is a simple answer ("" if not)."""
    return "check the file's read permission" if isinstance(exc, PermissionError) else ""


def fit_name(stem: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``stem + suffix`` when it fits in ``limit`` bytes (UTF-8); otherwise the stem cut at a
    character boundary plus a short hash of the whole stem, so that two long names that
    share their beginning still differ."""
    name = stem + suffix
    if len(name.encode("utf-8", "surrogateescape")) <= limit:
        return name
    tag = "~" + hashlib.sha1(stem.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    room = limit - len((tag + suffix).encode("utf-8", "surrogateescape"))
    cut = stem.encode("utf-8", "surrogateescape")[:max(room, 1)].decode("utf-8", "ignore")
    return cut + tag + suffix


def _tmp_name(path: Path) -> Path:
    """A temp name beside ``path``, unique per process, thread and call (no random probing:
    this runs once per crop, and ``mkstemp`` costs several times the write itself). A long
    ``path`` name is shortened so that the temp name stays a legal file name too."""
    tail = f".{os.getpid()}-{threading.get_ident()}-{next(_TMP_COUNTER)}.tmp"
    return path.with_name(fit_name("." + path.name, tail))


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
    tmp = _tmp_name(path)
    try:
        with disk_full_as_error(path):
            _mkdir_parent(path)
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """``data`` into ``path`` atomically (temp file + rename), with a plain ``open``'s
    permissions (0666 less the umask)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with disk_full_as_error(path):
            _write_new(tmp, path, data)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _write_new(tmp: Path, path: Path, data: bytes | memoryview) -> None:
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileNotFoundError:
        _mkdir_parent(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


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
    """torch.save through a temp file + rename (a kill -9 mid-write keeps the old file).

    Serialised in memory first: torch reports a failed file write (a full disk) as a bare
    RuntimeError ("unexpected pos"); a plain write raises :class:`DiskFullError` instead."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getbuffer())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
