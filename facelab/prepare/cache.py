"""The content-addressed crop cache: a re-run reads it (near-instant) and an interrupted run
resumes where it stopped."""
from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelab._io import disk_full_as_error, link_or_copy
from facelab.images import write_image
from facelab.prepare.config import PrepareConfig

#: A photo's outcome (:attr:`FileResult.status`).
STATUSES = ("kept", "no_face", "several_faces", "unreadable")


def default_cache_dir() -> Path:
    """``$FACELAB_CACHE`` or ``~/.cache/facelab``."""
    return Path(os.environ.get("FACELAB_CACHE") or Path.home() / ".cache" / "facelab").expanduser()


@dataclass
class FileResult:
    """What happened to one source photo."""

    path: str
    status: str
    reason: str = ""
    n_faces: int = 0
    crops: list[str] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)
    sha256: str = ""
    cached: bool = False


class CropCache:
    """Content-addressed crops: ``root/crops/<config digest>/<sha[:2]>/<sha>_<i>.<format>``,
    and each photo's result as one line ``<sha>\t<json>`` in ``records/*.jsonl`` beside them.

    Every worker appends to its own records file. A small file per record cost as much as
    the crop itself (creating a file took ~1 ms of kernel time on the 2-core VMs we measure
    on, a third of a photo's whole budget); an appended line costs microseconds. A line is
    written after its crops are in place, so a record never names a missing crop, and a
    line cut short by a kill (no newline) is ignored: the photo is simply redone.
    """

    def __init__(self, root: Path | str | None, config: PrepareConfig) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.dir = self.root / "crops" / config.digest()
        self.config = config
        self._index: dict[str, tuple[Path, int, int]] | None = None
        self._log: Any = None  # this worker's records file, opened on the first store

    def _base(self, sha: str) -> Path:
        return self.dir / sha[:2] / sha

    def _read_index(self) -> dict[str, tuple[Path, int, int]]:
        """sha -> (records file, start, end) of its JSON, from every complete line."""
        index: dict[str, tuple[Path, int, int]] = {}
        for f in sorted((self.dir / "records").glob("*.jsonl")):
            try:
                data = f.read_bytes()
            except OSError:
                continue
            pos = 0
            while (end := data.find(b"\n", pos)) != -1:
                if data[pos + 64:pos + 65] == b"\t":
                    index[data[pos:pos + 64].decode("ascii", "replace")] = (f, pos + 65, end)
                pos = end + 1
        return index

    def load(self, sha: str) -> FileResult | None:
        if self._index is None:
            self._index = self._read_index()
        entry = self._index.get(sha)
        if entry is None:
            return None
        f, start, end = entry
        try:
            with open(f, "rb") as fh:
                fh.seek(start)
                result = FileResult(**json.loads(fh.read(end - start)))
        except (OSError, ValueError, TypeError):
            return None
        if not all(Path(p).is_file() for p in result.crops):
            return None
        result.cached = True
        return result

    def store(self, result: FileResult, crops: list[np.ndarray]) -> FileResult:
        base = self._base(result.sha256)
        result.crops = [str(write_image(base.with_name(f"{base.name}_{i}.{self.config.format}"), c))
                        for i, c in enumerate(crops)]
        if self._log is None:
            with disk_full_as_error(self.dir / "records"):
                (self.dir / "records").mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._log = open(self.dir / "records" / name, "ab", buffering=0)  # noqa: SIM115 - lives with the worker
        line = f"{result.sha256}\t{json.dumps(asdict(result), separators=(',', ':'))}\n".encode()
        with disk_full_as_error(self._log.name):
            self._log.write(line)  # one unbuffered append per record: complete once written
        return result


def place_crop(crop: str | Path, target: Path) -> None:
    """Hard-link (or copy) a cached crop to its output name; an output that is already there
    with the same size is kept (a re-run into the same folder writes nothing)."""
    if not (target.is_file() and target.stat().st_size == Path(crop).stat().st_size):
        link_or_copy(crop, target)

