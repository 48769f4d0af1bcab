"""faiss indexes over passage embeddings: build from a factory string, search, save, load."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from jdr.io import atomic_path

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def _first_line(e: Exception) -> str:
    # faiss errors are multi-line C++ traces; the useful part is the "Error: ..." line.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Error"):
            return ln
    return lines[0] if lines else type(e).__name__


def _as_matrix(x, name: str, d: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n, d] array, got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{name} have dimension {x.shape[1]} but the index has dimension {d}")
    return x


def _seed_training(index: faiss.Index, seed: int) -> None:
    """Seed the k-means runs inside the index (IVF coarse quantizer, PQ codebooks); OPQ's init is fixed by faiss."""
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        ivf.cp.seed = seed
    pq = getattr(ivf if ivf is not None else base, "pq", None)
    if pq is not None:
        pq.cp.seed = seed


def build_index(
    emb, factory: str = "Flat", *, metric: str = "ip", train_sample: int | None = None, seed: int = 0
) -> faiss.Index:
    """Build a faiss index over `emb[N, d]` (float32) from a factory string ("Flat", "IVF256,Flat", "IVF256,PQ16",
    "HNSW32", "OPQ16,IVF256,PQ16", ...). Trains, when the index needs it, on `train_sample` rows drawn with
    `seed` (all rows when None), then adds every row; faiss row i is `emb[i]`. `metric` is "ip" or "l2"."""
    emb = _as_matrix(emb, "embeddings")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    n, d = emb.shape
    try:
        index = faiss.index_factory(d, factory, _METRICS[metric])
    except RuntimeError as e:
        raise ValueError(f"faiss rejects factory {factory!r} for dimension {d}: {_first_line(e)}") from None
    if not index.is_trained:
        _seed_training(index, seed)
        train = emb
        if train_sample is not None and train_sample < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=train_sample, replace=False))
            train = emb[rows]
        try:
            index.train(train)
        except RuntimeError as e:
            raise ValueError(
                f"training faiss index {factory!r} on {len(train)} vectors failed: {_first_line(e)}"
            ) from None
    index.add(emb)
    return index


def search(index: faiss.Index, queries, k: int, *, nprobe: int | None = None, efSearch: int | None = None):
    """Top-`k` search for `queries[M, d]` -> `(scores[M, k] float32, rows[M, k] int64)`, best first; rows are -1
    where the index holds fewer than k vectors. `nprobe` (IVF) and `efSearch` (HNSW) set search-time parameters."""
    queries = _as_matrix(queries, "queries", index.d)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    params = faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", efSearch)):
        if value is not None:
            try:
                params.set_index_parameter(index, name, int(value))
            except RuntimeError as e:
                raise ValueError(f"cannot set {name}={value} on this index: {_first_line(e)}") from None
    scores, rows = index.search(queries, k)
    return scores, rows


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write `index` to `path` (temp file then rename)."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by `save_index`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index file")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: not a faiss index ({_first_line(e)})") from None
