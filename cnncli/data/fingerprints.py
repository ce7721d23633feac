"""Fingerprints that find the same picture twice: exact (content hash) and near (perceptual hash).

* ``content_hash``: SHA-256 of a file's bytes: the same file copied or renamed.
* ``phash``: a 64-bit DCT perceptual hash of a gray thumbnail: the signs of its 8x8 lowest-frequency DCT
  coefficients against their median (the constant term left out). Resizing, re-encoding (JPEG at quality 40
  and up) and mild blur move only a few of those bits, while different pictures differ in about half.
* ``near_pairs``: image pairs whose hashes differ in at most ``max_bits`` bits AND whose thumbnails, shrunk
  to SMALL x SMALL and standardised to mean 0 and standard deviation 1, differ by at most ``max_diff`` on
  average per pixel. The
  second check rejects different pictures whose coarse layout happens to match (common for centred product
  photos), which the 64 bits alone cannot tell apart; at SMALL px, resampling and JPEG noise average out
  while the picture's own detail remains.

Pure numpy; thumbnails are uint8 (N, S, S) gray, S >= 8.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

MAX_BITS = 10  # hash prefilter: resized and re-encoded copies measured at 0-8 bits
SMALL = 12  # side of the standardised thumbnails that confirm a near pair
MAX_DIFF = 0.065  # mean |difference| of standardised SMALL thumbnails; see README "Checking data" for the figures


def content_hash(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


def phash(thumbs: np.ndarray) -> np.ndarray:
    """64-bit perceptual hashes, uint64 (N,), of gray thumbnails uint8 (N, S, S) (S >= 8)."""
    t = np.asarray(thumbs, dtype=np.float64)
    if t.ndim != 3 or t.shape[1] != t.shape[2] or t.shape[1] < 8:
        raise ValueError(f"thumbnails must be (N, S, S) with S >= 8, got {t.shape}")
    d = _dct_matrix(t.shape[1])[:8]  # only the 8 lowest frequencies are needed
    low = np.einsum("ai,nij,bj->nab", d, t, d).reshape(len(t), 64)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    bits[:, 0] = False  # the mean brightness says nothing about the picture's layout
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _standardise(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails uint8 (N, S, S) -> float32 (N, SMALL * SMALL): box-filtered down to SMALL px (averaging away
    resampling and compression noise), then mean 0 and standard deviation 1 (a flat image stays flat)."""
    from PIL import Image

    small = np.stack([np.asarray(Image.fromarray(t).resize((SMALL, SMALL), Image.Resampling.BOX), np.float32)
                      for t in np.asarray(thumbs, dtype=np.uint8)]).reshape(len(thumbs), -1)
    small -= small.mean(axis=1, keepdims=True)
    return small / np.maximum(small.std(axis=1, keepdims=True), 1.0)


def near_pairs(thumbs: np.ndarray, others: np.ndarray | None = None, max_bits: int = MAX_BITS,
               max_diff: float = MAX_DIFF, block: int = 128) -> list[tuple[int, int]]:
    """Index pairs of near-identical gray thumbnails uint8 (N, S, S); see the module docstring.

    Without ``others``: pairs (i, j), i < j, within ``thumbs``. With ``others`` (M, S, S): pairs (i, j) of
    thumbs[i] and others[j]. Compares every pair's hashes, ``block`` rows at a time (memory ~ block * M * 9
    bytes), then the standardised small thumbnails of the pairs that pass.
    """
    h = phash(thumbs)
    z = _standardise(thumbs)
    h2, z2 = (h, z) if others is None else (phash(others), _standardise(others))
    pairs = []
    for start in range(0, len(h), block):
        close = np.bitwise_count(h[start:start + block, None] ^ h2[None, :]) <= max_bits
        ii, jj = np.nonzero(close)
        ii = ii + start
        if others is None:
            keep = jj > ii
            ii, jj = ii[keep], jj[keep]
        diff = np.abs(z[ii] - z2[jj]).mean(axis=1) if ii.size else np.zeros(0)
        pairs += [(int(i), int(j)) for i, j in zip(ii[diff <= max_diff], jj[diff <= max_diff])]
    return pairs


def exact_groups(keys) -> list[list[int]]:
    """Groups (lists of indices, in order) of equal keys that occur more than once."""
    seen: dict = {}
    for i, k in enumerate(keys):
        seen.setdefault(k, []).append(i)
    return [g for g in seen.values() if len(g) > 1]


def join_pairs(n: int, pairs) -> list[list[int]]:
    """Connected groups (sorted lists of indices, size >= 2) of the graph on 0..n-1 with edges ``pairs``."""
    parent = list(range(n))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def array_overlap(train: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """How many images of ``other`` also appear in ``train`` (both uint8 (N, C, H, W), as decoded for
    training): (exact pixel copies, near copies that are not exact). Thumbnails are the channel means."""
    if len(train) == 0 or len(other) == 0:
        return 0, 0
    exact_keys = {hashlib.sha256(x.tobytes()).digest() for x in train}
    exact = [hashlib.sha256(x.tobytes()).digest() in exact_keys for x in other]
    if train.shape[-1] < 8 or train.shape[-2] != train.shape[-1]:
        return sum(exact), 0

    def thumbs(x):
        return x.mean(axis=1).round().astype(np.uint8)

    near = {j for _, j in near_pairs(thumbs(train), thumbs(other)) if not exact[j]}
    return sum(exact), len(near)
