"""ANN candidates: the dense model's own top-k passages for each training query (ANCE / STAR hard negatives)."""

from __future__ import annotations

import faiss
import numpy as np

from jdr.index import faiss_index


def _check(emb, name: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"ann: {name} embeddings must be a non-empty [n, d] array, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError(f"ann: {name} embeddings hold NaN or inf (a diverged model?)")
    return emb


def ann_index(
    passage_emb: np.ndarray, *, factory: str = "Flat", train_sample: int | None = None, seed: int = 0
) -> faiss.Index:
    """Inner-product faiss index over `passage_emb[N, d]` (row i = corpus row i). "Flat" is exact; use e.g.
    "IVF4096,Flat" for big corpora (trained on `train_sample` rows). Empty or non-finite input is a ValueError."""
    index = faiss_index.build_index(_check(passage_emb, "passage"), factory, train_sample=train_sample, seed=seed)
    if index.ntotal == 0:
        raise ValueError("ann: the faiss index is empty")
    return index


def ann_search(
    index: faiss.Index, query_emb: np.ndarray, k: int, *, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` of `query_emb[Q, d]` -> `(scores[Q, k] float32, rows[Q, k] int64)`, best first, -1 where fewer.
    Ask for k = depth + max positives per query so `depth` candidates survive the positive filter."""
    return faiss_index.search(index, _check(query_emb, "query"), k, nprobe=nprobe)


def ann_candidates(
    query_emb: np.ndarray,
    passage_emb: np.ndarray,
    k: int,
    *,
    factory: str = "Flat",
    nprobe: int | None = None,
    train_sample: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`ann_index` then `ann_search`: `(scores[Q, k], rows[Q, k])` of `query_emb[Q, d]` over `passage_emb[N, d]`."""
    index = ann_index(passage_emb, factory=factory, train_sample=train_sample, seed=seed)
    return ann_search(index, query_emb, k, nprobe=nprobe)
