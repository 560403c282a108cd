"""Perceptual hashes for finding exact and near-identical photos (collect, inspect).

Two 64-bit hashes per picture, both computed on a greyscale thumbnail:

* ``phash``: the sign of the low-frequency 8x8 block of a 32x32 DCT against its median;
  robust to re-encoding, resizing, small brightness changes;
* ``dhash``: the sign of horizontal gradients on a 9x8 thumbnail; catches what the DCT
  hash smooths over.

Hashes alone cannot tell a re-saved copy from a second shot of a person who sat still
(263 ORL pairs are within 10 bits), so a hash match is confirmed on standardised
thumbnails (:func:`thumb_difference`, tolerant to a few percent of extra crop). Measured
by bench/inspect_collect.py on ../shared/data: re-encoded (JPEG q40), resized, re-toned
(+8%) or PNG re-saved copies are all found; 275 of 300 copies cropped 3% tighter; no
pair among ORL's 400 distinct shots (the closest scores 0.36 against the 0.3 limit).

Why not the ``imagehash`` package (phash/dhash, the same job): measured on ../shared/data
(``bench/inspect_collect.py --imagehash``, 2 shared cores, load average 2.6) with the same rule (hash distance <= 10,
then the thumbnail check), it finds the same near-duplicate pairs among the originals
(celeba-mini: the same 5 pairs; ORL: none) and the same copies after JPEG q40, resizing,
+8% brightness and PNG re-saving (300/300 each), but fewer 3%-tighter crops (266/300 against
275/300 here), and it is slower: phash+dhash 0.53 against 0.32 ms per celeba-mini photo,
0.24 against 0.19 ms per ORL photo (best of 3). Its hashes also differ bit for bit (LANCZOS
resizing, DC term in the median), so fingerprints stored by earlier runs would stop matching.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

HASH_BITS = 64
#: Hamming distance (out of 64 bits, both hashes) below which two pictures are candidates.
NEAR_THRESHOLD = 10
#: Thumbnail difference (see :func:`thumb_difference`) below which a candidate is confirmed.
DIFF_THRESHOLD = 0.3
THUMB = 48
#: Side of the compared thumbnail views, and the centred zooms tried (1.06 = a 3% tighter crop).
VIEW = 32
ZOOMS = (1.0, 1.03, 1.065, 1.1)


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n): ``D @ x`` is the DCT of column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _grey(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB/greyscale uint8 -> float32 greyscale thumbnail of ``size`` (w, h)."""
    from PIL import Image

    arr = np.asarray(rgb)
    img = Image.fromarray(arr if arr.ndim == 2 else np.ascontiguousarray(arr[..., :3]))
    return np.asarray(img.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _bits_to_int(bits: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in bits.ravel()), 2)


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an image (uint8, HxW or HxWx3)."""
    g = _grey(rgb, (32, 32))
    d = _dct_matrix(32)
    low = (d @ g @ d.T)[:8, :8].ravel()
    return _bits_to_int(low > np.median(low[1:]))


def dhash(rgb: np.ndarray) -> int:
    """64-bit difference hash (horizontal gradient signs on a 9x8 thumbnail)."""
    g = _grey(rgb, (9, 8))
    return _bits_to_int(g[:, 1:] > g[:, :-1])


@dataclass(frozen=True)
class Fingerprint:
    """What near-duplicate search needs of one picture: two hashes and a tiny thumbnail.

    Attributes:
        phash: 64-bit DCT hash.
        dhash: 64-bit gradient hash.
        thumb: 48x48 greyscale uint8 thumbnail, used to confirm a hash match.
    """

    phash: int
    dhash: int
    thumb: np.ndarray

    def hash_distance(self, other: "Fingerprint") -> int:
        """The larger of the two Hamming distances (0 = perceptually identical)."""
        return max(hamming(self.phash, other.phash), hamming(self.dhash, other.dhash))


def fingerprint(rgb: np.ndarray) -> Fingerprint:
    """The :class:`Fingerprint` of an image (uint8, HxW or HxWx3)."""
    return Fingerprint(phash(rgb), dhash(rgb), _grey(rgb, (THUMB, THUMB)).astype(np.uint8))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def thumb_difference(a: Fingerprint, b: Fingerprint) -> float:
    """How different two thumbnails are, allowing one to be a slightly tighter crop.

    The 99th percentile of the absolute difference of the standardised 32x32 views,
    minimised over a few centred zooms (:data:`ZOOMS`) of either picture, so that the same
    photo cropped a few percent tighter still matches. Re-encoding or resizing leaves it
    near 0.05 (at most ~0.12 on CelebA); two consecutive shots of a person sitting still
    (ORL) differ locally (eyes, mouth), which the percentile keeps while a mean would
    wash it out.
    """
    base_a, base_b = _view(a.thumb, 1.0), _view(b.thumb, 1.0)
    best = _p99(base_a, base_b)
    for z in ZOOMS[1:]:
        best = min(best, _p99(_view(a.thumb, z), base_b), _p99(base_a, _view(b.thumb, z)))
    return best


def _p99(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.percentile(np.abs(x - y), 99))


def _view(thumb: np.ndarray, zoom: float) -> np.ndarray:
    """The centre 1/zoom of a stored thumbnail, resized to 32x32 and standardised."""
    from PIL import Image

    n = thumb.shape[0]
    c = n / zoom
    box = ((n - c) / 2, (n - c) / 2, (n + c) / 2, (n + c) / 2)
    t = np.asarray(Image.fromarray(thumb).resize((VIEW, VIEW), Image.Resampling.BILINEAR, box=box), np.float32)
    return (t - t.mean()) / (t.std() + 1e-6)


def same_picture(a: Fingerprint, b: Fingerprint, hash_threshold: int = NEAR_THRESHOLD,
                 diff_threshold: float = DIFF_THRESHOLD) -> bool:
    """True when ``a`` and ``b`` are the same picture up to re-encoding, resizing or light edits."""
    return a.hash_distance(b) <= hash_threshold and thumb_difference(a, b) <= diff_threshold


def _unpack(values: Sequence[int]) -> np.ndarray:
    """Python ints (64-bit) -> float32 bit matrix (N, 64)."""
    as_u64 = np.array(values, dtype=np.uint64)
    return np.unpackbits(as_u64.view(np.uint8).reshape(-1, 8), axis=1).astype(np.float32)


def near_pairs(fps: Sequence[Fingerprint], hash_threshold: int = NEAR_THRESHOLD,
               diff_threshold: float = DIFF_THRESHOLD, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, hash_distance)``, i < j, that are the same picture (:func:`same_picture`).

    Hash distances are computed in blocks of ``chunk`` rows (bounded memory); only the
    few candidate pairs are confirmed on their thumbnails.
    """
    n = len(fps)
    if n < 2:
        return []
    pb, db = _unpack([f.phash for f in fps]), _unpack([f.dhash for f in fps])
    p1, d1 = pb.sum(1), db.sum(1)
    pairs: list[tuple[int, int, int]] = []
    chunk = max(16, min(chunk, 50_000_000 // n))  # keep each (chunk, n) block near 200 MB
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        dp = p1[s:e, None] + p1[None, :] - 2 * (pb[s:e] @ pb.T)
        dd = d1[s:e, None] + d1[None, :] - 2 * (db[s:e] @ db.T)
        dist = np.rint(np.maximum(dp, dd)).astype(np.int32)
        for i, j in zip(*np.nonzero(dist <= hash_threshold)):
            i = int(i) + s
            if i < j and thumb_difference(fps[i], fps[j]) <= diff_threshold:
                pairs.append((i, int(j), int(dist[i - s, j])))
    return pairs


def find_same(fp: Fingerprint, others: Sequence[Fingerprint], hash_threshold: int = NEAR_THRESHOLD,
              diff_threshold: float = DIFF_THRESHOLD) -> int | None:
    """Index of the first of ``others`` that is the same picture as ``fp``, or None."""
    if not others:
        return None
    ph = np.array([o.phash for o in others], dtype=np.uint64)
    dh = np.array([o.dhash for o in others], dtype=np.uint64)
    dist = np.maximum(np.bitwise_count(ph ^ np.uint64(fp.phash)), np.bitwise_count(dh ^ np.uint64(fp.dhash)))
    for i in np.flatnonzero(dist <= hash_threshold):
        if thumb_difference(fp, others[int(i)]) <= diff_threshold:
            return int(i)
    return None


def groups(n: int, pairs: Sequence[tuple[int, int, int]]) -> list[list[int]]:
    """Connected groups (size >= 2) of indices 0..n-1 linked by ``pairs``, each ascending, in
    order of their first index (scipy's connected components of the pair graph)."""
    if not pairs:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    graph = coo_matrix((np.ones(len(pairs), np.int8), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for k, lab in enumerate(label.tolist()):
        members.setdefault(lab, []).append(k)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])
