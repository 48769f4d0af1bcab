"""Fusion of retrieval runs (`jdr fuse`): reciprocal rank fusion and score-normalised linear fusion — the hybrid
of a sparse (BM25) and a dense run that BEIR users reach for.

A run is `{qid: {docid: score}}` (jdr.evaluate.Run). Ranks are taken in trec_eval's order (`jdr.evaluate.ranked`:
score descending, ties by docid descending), not from a file's rank column, so a run's ranks are the ones its
metrics were computed with. A query present in only some runs is fused from those.

- RRF (Cormack, Clarke & Buettcher, SIGIR 2009): `score(d) = sum_i w_i / (k + rank_i(d))` over the runs that
  return d (rank from 1; k = 60 in the paper; weights 1 by default). Scale-free: only ranks matter.
- Linear: `score(d) = sum_i w_i * norm_i(d)` with each run's scores normalised per query — "minmax" to [0, 1]
  or "zscore" (mean 0, standard deviation 1). A doc that run i did not return takes run i's lowest normalised
  score for that query (the "default minimum" of Ma et al.'s dense-sparse hybrids): absent from a top-k list
  means "ranked below it", not "average". A query whose scores are all equal in a run (one document, or ties)
  gives those documents the top of the range and the documents the run did not return its bottom: minmax 1 and 0,
  zscore +1 and -1 (the two values of a list of two distinct scores): a lone hit counts as the run's best, rather
  than normalising to the floor absent documents get and contributing nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jdr.evaluate import Run, ranked

METHODS = ("rrf", "linear")
NORMS = ("minmax", "zscore")


def _weights(runs: Sequence[Run], weights: Sequence[float] | None) -> list[float]:
    if len(runs) < 2:
        raise ValueError("fuse: give at least two runs")
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"fuse: {len(weights)} weights for {len(runs)} runs")
    if any(not np.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(f"fuse: weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return [float(w) for w in weights]


def _top(run_docs: dict[str, float], depth: int | None) -> list[tuple[str, float]]:
    docs = ranked(run_docs)
    return docs if depth is None else docs[:depth]


def _cut(fused: dict[str, dict[str, float]], top_k: int | None) -> Run:
    return {q: dict(ranked(docs)[:top_k] if top_k else ranked(docs)) for q, docs in fused.items()}


def rrf(
    runs: Sequence[Run],
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    depth: int | None = None,
    top_k: int | None = 1000,
) -> Run:
    """Reciprocal rank fusion of `runs`: each query's docs scored `sum_i w_i / (k + rank_i)` over the runs' top
    `depth` (None = all), the best `top_k` kept (None = all)."""
    w = _weights(runs, weights)
    if k < 0:
        raise ValueError(f"fuse: rrf k must be >= 0, got {k}")
    fused: dict[str, dict[str, float]] = {}
    for run, wi in zip(runs, w):
        for qid, docs in run.items():
            out = fused.setdefault(qid, {})
            for rank, (did, _) in enumerate(_top(docs, depth), 1):
                out[did] = out.get(did, 0.0) + wi / (k + rank)
    return _cut(fused, top_k)


def normalize(scores: np.ndarray, norm: str) -> np.ndarray:
    """One query's scores `[n]` of one run, normalised: "minmax" -> [0, 1], "zscore" -> mean 0, std 1 (population
    std); a constant list (one score, or ties) -> ones, the top of the range (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if norm not in NORMS:
        raise ValueError(f"fuse: norm must be one of {list(NORMS)}, got {norm!r}")
    if len(scores) == 0 or np.ptp(scores) == 0:
        return np.ones_like(scores)
    if norm == "minmax":
        return (scores - scores.min()) / np.ptp(scores)
    return (scores - scores.mean()) / scores.std()


def linear(
    runs: Sequence[Run],
    *,
    weights: Sequence[float] | None = None,
    norm: str = "minmax",
    depth: int | None = None,
    top_k: int | None = 1000,
) -> Run:
    """Weighted sum of per-query normalised scores (`normalize`) over the runs' top `depth` docs; a doc missing
    from a run gets that run's lowest normalised score for the query. The best `top_k` kept (None = all)."""
    w = _weights(runs, weights)
    normalize(np.zeros(0), norm)  # validates `norm` before any work
    fused: dict[str, dict[str, float]] = {}
    qids = list(dict.fromkeys(q for run in runs for q in run))
    for qid in qids:
        per_run = []
        for run in runs:
            docs = _top(run.get(qid, {}), depth)
            scores = np.array([s for _, s in docs])
            values = normalize(scores, norm)
            # the floor: the lowest normalised score; for a constant list the bottom of the range (its docs have the
            # top); 0 for a query the run lacks (a constant, so no effect)
            constant = len(scores) > 0 and np.ptp(scores) == 0
            floor = (0.0 if norm == "minmax" else -1.0) if constant else float(values.min(initial=0.0))
            per_run.append(({d: float(v) for (d, _), v in zip(docs, values)}, floor))
        union = dict.fromkeys(d for docs, _ in per_run for d in docs)
        fused[qid] = {d: sum(wi * docs.get(d, floor) for wi, (docs, floor) in zip(w, per_run)) for d in union}
    return _cut(fused, top_k)


def fuse(
    runs: Sequence[Run],
    method: str = "rrf",
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    norm: str = "minmax",
    depth: int | None = None,
    top_k: int | None = 1000,
) -> Run:
    """`rrf` or `linear` fusion of `runs` by name (the `jdr fuse` entry point); `k` is RRF's, `norm` linear's."""
    if method == "rrf":
        return rrf(runs, k=k, weights=weights, depth=depth, top_k=top_k)
    if method == "linear":
        return linear(runs, weights=weights, norm=norm, depth=depth, top_k=top_k)
    raise ValueError(f"fuse: method must be one of {list(METHODS)}, got {method!r}")
