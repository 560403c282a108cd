"""Crop store: a data set's face crops as shards of fixed-size uint8 arrays on disk, read a
batch at a time, so training memory no longer grows with the number of photos.

Layout (``<cache>/stores/<key>/``)::

    shard-00000.npy ...   uint8 (rows, size, size, 3), every shard ``shard_rows`` long but the last
    index.csv             row, crop, source photo, label, identity, split of every row
    store.json            rows, size, shard_rows, shards, key

The key is a hash of the input size, the shard length and every crop's path, byte size and
modification time, in order: a changed crop, size or order is a new store, and a store once
built is reused by every later run (and by every DDP rank that shares the folder).

Each shard is written whole and atomically, so a build that is killed resumes at the first
missing shard, and ranks may build disjoint shards (or the same shard: the bytes are equal).
Pixels are those of ``facelab.bundle.resize_crops`` on the decoded crop: exactly what the
in-memory path of :mod:`facelab.train` holds.

Rows are read with ``os.preadv`` straight into the batch array, not through a memory map:
every page of a map that has been read counts toward the reader's resident memory until
the kernel reclaims it, so an epoch over a mapped 7 GB store shows a 7 GB process
(bench/scale.py measures both).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from facelab._io import atomic_path, write_json
from facelab._progress import progress as progress_bar
from facelab.bundle import resize_crops
from facelab.errors import DataError
from facelab.images import read_image

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Rows per shard by default: 1024 crops of 96 px are 28 MB, of 160 px 79 MB.
SHARD_ROWS = 1024
STORE_FORMAT = 1


def store_key(paths: Sequence[Path | str], size: int, shard_rows: int) -> str:
    """Hash of what the store's bytes depend on: the crops (path, byte size, mtime) in
    order, the input size and the shard length."""
    h = hashlib.sha256(f"facelab-store {STORE_FORMAT} {size} {shard_rows}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def shard_count(rows: int, shard_rows: int) -> int:
    return max(1, -(-rows // shard_rows))


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds: ``rows`` crops of ``size`` px in shards of ``shard_rows``."""

    root: Path
    rows: int
    size: int
    shard_rows: int

    @property
    def shards(self) -> int:
        return shard_count(self.rows, self.shard_rows)

    def shard_path(self, s: int) -> Path:
        return self.root / f"shard-{s:05d}.npy"

    def shard_range(self, s: int) -> range:
        return range(s * self.shard_rows, min((s + 1) * self.shard_rows, self.rows))

    def rows_of(self, shards: Iterable[int]) -> np.ndarray:
        parts = [np.arange(r.start, r.stop) for r in map(self.shard_range, shards)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


def spec_for(paths: Sequence[Path | str], size: int, cache_root: Path, shard_rows: int = SHARD_ROWS) -> StoreSpec:
    return StoreSpec(Path(cache_root) / "stores" / store_key(paths, size, shard_rows), len(paths), size, shard_rows)


def build_shards(spec: StoreSpec, paths: Sequence[Path | str], shards: Iterable[int] | None = None,
                 progress: bool = False) -> list[int]:
    """Write the shards (all, or those listed) that are not on disk yet; returns those written.

    One shard is in memory at a time. Decoding and resizing are ``load_crops``'s."""
    todo = [s for s in (range(spec.shards) if shards is None else shards) if not spec.shard_path(s).is_file()]
    total = sum(len(spec.shard_range(s)) for s in todo)
    with progress_bar(total, "writing crop store", enabled=progress and bool(todo)) as bar:
        for s in todo:
            _write_shard(spec, s, [paths[i] for i in spec.shard_range(s)], bar)
    return todo


def _write_shard(spec: StoreSpec, s: int, paths: Sequence[Path | str], bar: object) -> None:
    arr = np.empty((len(paths), spec.size, spec.size, 3), np.uint8)
    for i, p in enumerate(paths):
        arr[i] = resize_crops([read_image(p)], spec.size)[0]
        bar.update(1)  # type: ignore[attr-defined]
    with atomic_path(spec.shard_path(s)) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def write_index(spec: StoreSpec, crops: Sequence[Path | str], sources: Sequence[Path | str],
                labels: np.ndarray, identities: Sequence[str | None], splits: Sequence[str | None]) -> None:
    """``index.csv`` (what each row is) and ``store.json``; written once, after the shards."""
    if (spec.root / "store.json").is_file():
        return
    with atomic_path(spec.root / "index.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)  # row by row: a million rows never sit in memory as one string
        w.writerow(["row", "crop", "source", "label", "identity", "split"])
        for i in range(spec.rows):
            text = " ".join(str(int(v)) for v in np.ravel(labels[i]))
            w.writerow([i, str(crops[i]), str(sources[i]), text, identities[i] or "", splits[i] or ""])
    write_json(spec.root / "store.json", {"format": STORE_FORMAT, "rows": spec.rows, "size": spec.size,
                                          "shard_rows": spec.shard_rows, "shards": spec.shards,
                                          "key": spec.root.name})


class CropStore:
    """Reads rows of a built store: ``store.read(rows) -> uint8 (len(rows), size, size, 3)``.

    File descriptors open lazily per process, so a store made in the main process works in
    DataLoader worker processes too (``os.preadv`` does not move a shared file offset).

    With ``pin_memory`` (training on a GPU) :meth:`tensor` reads straight into page-locked
    memory, so the batch goes to the GPU in one asynchronous copy with no staging copy
    first; only in the process that opened the store: a forked DataLoader worker must not
    touch CUDA (the loader pins its batches in the main process instead)."""

    def __init__(self, spec: StoreSpec, pin_memory: bool = False) -> None:
        self.spec = spec
        self.pin_memory = pin_memory
        self.row_bytes = spec.size * spec.size * 3
        self._fds: dict[int, tuple[int, int]] = {}
        self._pid = self._owner = os.getpid()

    def __len__(self) -> int:
        return self.spec.rows

    def __getstate__(self) -> dict:
        return {"spec": self.spec}  # a spawned worker reads unpinned (see the class docstring)

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    def _open(self, s: int) -> tuple[int, int]:
        if self._pid != os.getpid():  # a forked worker: open its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if s not in self._fds:
            path = self.spec.shard_path(s)
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(f)
                offset = f.tell()
            want = (len(self.spec.shard_range(s)), self.spec.size, self.spec.size, 3)
            if tuple(shape) != want or fortran or dtype != np.uint8:
                raise DataError(f"{path}: holds {dtype} {shape}, expected uint8 {want}; delete the folder "
                                 f"{self.spec.root} to rebuild it")
            self._fds[s] = (os.open(path, os.O_RDONLY), offset)
        return self._fds[s]

    def read(self, rows: np.ndarray | Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The crops of ``rows`` (any order, repeats allowed), into ``out`` when given."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.spec.rows):
            raise IndexError(f"row out of range 0..{self.spec.rows - 1}")
        shape = (len(rows), self.spec.size, self.spec.size, 3)
        if out is None:
            out = np.empty(shape, np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}")
        flat = out.reshape(len(rows), -1)
        for i in np.argsort(rows, kind="stable"):  # forward through each file
            s, r = divmod(int(rows[i]), self.spec.shard_rows)
            fd, offset = self._open(s)
            if os.preadv(fd, [flat[i]], offset + r * self.row_bytes) != self.row_bytes:
                raise DataError(f"{self.spec.shard_path(s)}: short read at row {r}; delete {self.spec.root} to rebuild it")
        return out

    def tensor(self, rows: np.ndarray | Sequence[int]) -> "torch.Tensor":
        """:meth:`read` as a uint8 tensor, page-locked when ``pin_memory`` is set and this
        is the process that opened the store."""
        import torch

        rows = np.atleast_1d(np.asarray(rows, np.int64))
        pin = self.pin_memory and os.getpid() == self._owner
        out = torch.empty((len(rows), self.spec.size, self.spec.size, 3), dtype=torch.uint8, pin_memory=pin)
        self.read(rows, out.numpy())
        return out

    def __getitem__(self, rows: object) -> "torch.Tensor":
        """Torch-style indexing for code written against an in-memory uint8 tensor."""
        import torch

        if isinstance(rows, slice):
            idx = np.arange(*rows.indices(self.spec.rows))
        else:
            idx = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        return self.tensor(idx)

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds = {}


def rank_rows(spec: StoreSpec, rank: int, world: int) -> np.ndarray:
    """The rows DDP rank ``rank`` of ``world`` reads: whole shards ``rank, rank + world, ...``
    when there are at least as many shards as ranks, else every ``world``-th row."""
    if world == 1:
        return np.arange(spec.rows)
    if spec.shards >= world:
        return spec.rows_of(range(rank, spec.shards, world))
    return np.arange(rank, spec.rows, world)


def rank_shards(spec: StoreSpec, rank: int, world: int) -> list[int]:
    """The shards holding :func:`rank_rows` (all of them when shards < ranks)."""
    if world == 1 or spec.shards < world:
        return list(range(spec.shards))
    return list(range(rank, spec.shards, world))


def describe(spec: StoreSpec) -> str:
    mb = spec.rows * spec.size * spec.size * 3 / 2**20
    return f"{spec.rows} crops of {spec.size} px in {spec.shards} shard(s), {mb:.0f} MB at {spec.root}"


def read_spec(root: Path | str) -> StoreSpec:
    """The spec of a built store folder (its ``store.json``)."""
    meta = json.loads((Path(root) / "store.json").read_text())
    return StoreSpec(Path(root), int(meta["rows"]), int(meta["size"]), int(meta["shard_rows"]))
