"""Denoising hard negatives: drop likely false negatives before they are sampled.

Two rules, usable together (RocketQA; Qu et al. 2021): a teacher (cross-encoder, or the dense model itself)
scoring a candidate at or above a limit marks it as an unlabelled positive, and the very top of a ranking is
skipped because that is where unlabelled positives concentrate.
"""

from __future__ import annotations

import numpy as np


def denoise(
    rows: np.ndarray,
    *,
    skip_top: int = 0,
    scores: np.ndarray | None = None,
    threshold: float | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Filter ranked candidates `rows[Q, K]` (positives already removed, -1 padded) -> `[Q, K]`, order kept.

    `skip_top`: drop each query's first r valid candidates. `scores[Q, K]` (aligned with `rows`) with `threshold`:
    drop candidates scoring `>= threshold`, or `>= reference[q] - threshold` when a per-query `reference[Q]`
    (e.g. the positive's score) is given; a NaN reference keeps the query's candidates.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"denoise: rows must be [Q, K], got shape {rows.shape}")
    if skip_top < 0:
        raise ValueError(f"denoise: skip_top must be >= 0, got {skip_top}")
    keep = rows >= 0
    if skip_top:
        keep &= np.cumsum(keep, axis=1) > skip_top
    if threshold is not None:
        if scores is None:
            raise ValueError("denoise: a threshold needs teacher scores aligned with the candidates")
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape != rows.shape:
            raise ValueError(f"denoise: scores shape {scores.shape} differs from candidates shape {rows.shape}")
        keep &= ~near_positive(scores, threshold, reference)
    perm = np.argsort(~keep, axis=1, kind="stable")
    out = np.take_along_axis(rows, perm, axis=1).copy()
    out[~np.take_along_axis(keep, perm, axis=1)] = -1
    return out


def _reference(scores: np.ndarray, reference) -> np.ndarray:
    reference = np.asarray(reference, dtype=np.float32)
    if reference.shape != (scores.shape[0],):
        raise ValueError(f"denoise: reference must be [{scores.shape[0]}], got shape {reference.shape}")
    return reference[:, None]


def near_positive(scores: np.ndarray, threshold: float, reference: np.ndarray | None = None) -> np.ndarray:
    """bool `[Q, K]`: candidates scoring `>= reference[q] - threshold` (the margin rule; sentence-transformers'
    `absolute_margin`), or `>= threshold` without a reference. NaN scores or references compare False (kept)."""
    scores = np.asarray(scores, dtype=np.float32)
    limit = threshold if reference is None else _reference(scores, reference) - threshold
    with np.errstate(invalid="ignore"):
        return scores >= limit


def above_ratio(scores: np.ndarray, ratio: float, reference: np.ndarray) -> np.ndarray:
    """bool `[Q, K]`: candidates scoring `> ratio * reference[q]` (the fraction rule; sentence-transformers'
    `relative_margin` m is `ratio = 1 - m`). NaN scores or references compare False (kept)."""
    scores = np.asarray(scores, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        return scores > ratio * _reference(scores, reference)


def dense_scores(query_emb: np.ndarray, passage_emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner products `[Q, K]` of `query_emb[Q, d]` with `passage_emb[rows[Q, K]]`; NaN where rows is -1."""
    rows = np.asarray(rows)
    q, p = np.asarray(query_emb, dtype=np.float32), np.asarray(passage_emb, dtype=np.float32)
    out = np.empty(rows.shape, dtype=np.float32)
    block = max(1, (1 << 24) // max(1, rows.shape[1] * p.shape[1]))  # bound the gathered [b, K, d] copy
    for start in range(0, len(rows), block):
        r = rows[start : start + block]
        out[start : start + len(r)] = np.einsum("qd,qkd->qk", q[start : start + len(r)], p[np.maximum(r, 0)])
    out[rows < 0] = np.nan
    return out


def positive_scores(
    query_emb: np.ndarray, passage_emb: np.ndarray, pos_offsets: np.ndarray, pos_rows: np.ndarray
) -> np.ndarray:
    """Per query `[Q]`, the lowest inner product with one of its positives (CSR `pos_offsets[Q+1]`, `pos_rows`),
    NaN for a query without positives: a candidate scoring near the weakest positive is the likely false negative."""
    q = np.asarray(query_emb, dtype=np.float32)
    counts = np.diff(pos_offsets)
    owner = np.repeat(np.arange(len(counts)), counts)
    s = np.einsum("pd,pd->p", q[owner], np.asarray(passage_emb, dtype=np.float32)[pos_rows])
    out = np.full(len(counts), np.inf, dtype=np.float32)
    np.minimum.at(out, owner, s)
    out[counts == 0] = np.nan
    return out
