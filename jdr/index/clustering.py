"""Balanced hierarchical k-means (SPANN's head selection) on faiss k-means, and the distances SPANN's rules use.

SPANN clusters with a balance penalty inside k-means (SPTAG's BKT build); here faiss's plain k-means runs
recursively instead and the balance is a hard bound: a cluster holding more than `list_size` vectors is split
again with faiss k-means into `ceil(size / list_size)` (at most `branching`) parts, until every cluster holds at
most `list_size`. The number of heads follows from the data rather than being fixed in advance.
"""

from __future__ import annotations

import contextlib
import math

import faiss
import numpy as np

METRICS = ("ip", "l2")


def spann_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """Map faiss search scores to the non-negative distance SPANN's ratio rules compare.

    l2: faiss's squared L2, as is. ip: `1 - <x, c>` (cosine distance) for unit-norm x and c, which equals
    `||x - c||^2 / 2`, so eps1/eps2 mean the same thing under both metrics on unit-norm data."""
    return scores if metric == "l2" else 1.0 - scores


def flat_index(vectors: np.ndarray, metric: str) -> faiss.Index:
    """An exact faiss index over `vectors[K, d]` with `metric`'s similarity (IP for "ip", L2 for "l2")."""
    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


@contextlib.contextmanager
def faiss_single_thread():
    """Run faiss on one OpenMP thread inside the block: for the many small k-means splits and per-list scans,
    thread start-up and barriers cost more than the work (20x on a loaded 2-core machine)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _kmeans_split(x: np.ndarray, k: int, metric: str, niter: int, seed: int) -> np.ndarray:
    """Labels [n] of faiss k-means with `k` centroids over `x[n, d]` (spherical for ip)."""
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, spherical=metric == "ip", min_points_per_centroid=1
    )  # a small split is intended, not a mistake to warn about
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0]


def balanced_kmeans(
    x,
    list_size: int,
    *,
    metric: str = "ip",
    branching: int = 32,
    niter: int = 20,
    seed: int = 0,
    chunk: int = 262_144,
    member_heads: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`(heads[K, d] float32, labels[N] int64)` for `x[N, d]`: every head's cluster holds at most `list_size` rows.

    Top-down: the root and every cluster larger than `list_size` is split by faiss k-means into
    `min(branching, ceil(size / list_size))` parts; a split k-means cannot make (all rows in one part, e.g.
    duplicates) falls back to an even split in row order. Heads are the leaf means, L2-normalised for "ip", or
    with `member_heads` the leaf's row nearest its mean (SPTAG picks data vectors as heads).
    `x` may be a read-only memmap; rows are read in `chunk`-row blocks only at the root."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if list_size < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size}")
    n, d = x.shape
    heads: list[np.ndarray] = []
    labels = np.empty(n, np.int64)
    stack: list[np.ndarray | None] = [None]  # None = all rows (the root is never copied)
    splits = 0
    while stack:
        rows = stack.pop()
        size = n if rows is None else len(rows)
        if size <= list_size:
            members = np.asarray(x[:] if rows is None else x[rows], dtype=np.float32)  # x[None] adds an axis
            mean = members.mean(0)
            heads.append(members[np.argmin(((members - mean) ** 2).sum(1))] if member_heads else mean)
            labels[slice(None) if rows is None else rows] = len(heads) - 1
            continue
        k = min(branching, math.ceil(size / list_size))
        if rows is None:
            part = _root_labels(x, k, metric, niter, seed, chunk)
            rows = np.arange(n)
        else:
            with faiss_single_thread():
                part = _kmeans_split(
                    np.ascontiguousarray(x[rows], dtype=np.float32), k, metric, niter, seed + splits + 1
                )
        splits += 1
        order = np.argsort(part, kind="stable")
        parts = np.split(rows[order], np.flatnonzero(np.diff(part[order])) + 1)
        if len(parts) == 1:
            parts = np.array_split(rows, k)
        stack.extend(parts)
    heads_arr = np.stack(heads).astype(np.float32)
    return (_normalize(heads_arr) if metric == "ip" else heads_arr), labels


def _root_labels(x, k: int, metric: str, niter: int, seed: int, chunk: int) -> np.ndarray:
    """The root split: faiss k-means trains on its own subsample (k * 256 rows); all rows are then assigned."""
    n = x.shape[0]
    sample = min(n, k * 256)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=metric == "ip", min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x[rows], dtype=np.float32))
    labels = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        labels[s : s + chunk] = km.index.search(np.ascontiguousarray(x[s : s + chunk], dtype=np.float32), 1)[1][:, 0]
    return labels
