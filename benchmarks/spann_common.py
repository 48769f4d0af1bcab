"""Shared pieces of the SPANN benchmarks (spann_sim.py, memory_size.py): exact ground truth, recall@k, the
SPANN and faiss IVF-Flat sweeps (recall against vectors scanned per query), and the write-up helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np

from jdr.index.clustering import faiss_single_thread
from jdr.io import atomic_write
from jdr.run_info import cpu_model  # noqa: E402,F401  (re-exported; one definition: jdr/run_info.py)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows [M, k] of `q` over `x` by inner product (faiss Flat)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)[1]


def recall(rows: np.ndarray, gt: np.ndarray) -> float:
    """recall@k: mean fraction of the exact top-k (`gt[M, k]`) among the returned `rows[M, k]`."""
    return float((rows[:, :, None] == gt[:, None, :]).any(2).sum(1).mean() / gt.shape[1])


def spann_curve(index, q, gt, probes=(1, 2, 4, 8, 16, 32, 64), eps2s=(), eps2_probe: int = 64) -> list[dict]:
    """Recall@k against vectors scanned: one point per max_probe (no pruning), then per eps2 at `eps2_probe`."""
    k = gt.shape[1]
    points = []
    for max_probe, eps2 in [(p, None) for p in probes] + [(eps2_probe, e) for e in eps2s]:
        t = time.perf_counter()
        hits = index.search(q, k, max_probe=max_probe, eps2=eps2)
        ms = (time.perf_counter() - t) * 1000 / len(q)
        points.append(
            {
                "max_probe": max_probe,
                "eps2": eps2,
                "recall": recall(hits.rows, gt),
                "scanned": float(hits.scanned.mean()),
                "lists": float(hits.probed.mean()),
                "ms_per_query": ms,
            }
        )
    return points


def build_ivf(x: np.ndarray, nlist: int, seed: int = 0, train_per_list: int = 64) -> tuple[faiss.Index, float]:
    """faiss IVF-Flat (inner product, spherical k-means on `train_per_list * nlist` rows) -> (index, seconds)."""
    t = time.perf_counter()
    ivf = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed, ivf.cp.spherical, ivf.cp.niter = seed, True, 20
    ivf.cp.min_points_per_centroid = 1  # the sample size is chosen above; no warning for it
    n = min(len(x), train_per_list * nlist)
    ivf.train(x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))])
    ivf.add(x)
    return ivf, time.perf_counter() - t


def ivf_curve(ivf, q, gt, probes=(1, 2, 4, 8, 16, 32, 64, 128)) -> list[dict]:
    """The IVF peer's points: vectors scanned = faiss's own distance count (indexIVF_stats.ndis) per query.
    Searched on one thread, as the SPANN scan is, so ms/query compares like with like."""
    k = gt.shape[1]
    points = []
    for nprobe in probes:
        ivf.nprobe = nprobe
        faiss.cvar.indexIVF_stats.reset()
        t = time.perf_counter()
        with faiss_single_thread():
            _, rows = ivf.search(q, k)
        ms = (time.perf_counter() - t) * 1000 / len(q)
        points.append(
            {
                "nprobe": nprobe,
                "recall": recall(rows, gt),
                "lists": float(nprobe),
                "scanned": faiss.cvar.indexIVF_stats.ndis / len(q),
                "ms_per_query": ms,
            }
        )
    return points


def recall_at_scanned(points: list[dict], scanned: float) -> float | None:
    """Recall interpolated (linear in log scanned) at `scanned` vectors per query; None outside the curve."""
    pts = sorted((p["scanned"], p["recall"]) for p in points)
    xs, ys = np.log([p[0] for p in pts]), [p[1] for p in pts]
    if not xs[0] <= np.log(scanned) <= xs[-1]:
        return None
    return float(np.interp(np.log(scanned), xs, np.maximum.accumulate(ys)))


def scanned_for_recall(points: list[dict], target: float) -> float | None:
    """Fewest vectors scanned per query (interpolated) at which the curve reaches `target` recall; None if never."""
    pts = sorted((p["scanned"], p["recall"]) for p in points)
    for (s0, r0), (s1, r1) in zip([(pts[0][0], 0.0)] + pts[:-1], pts):
        if r1 >= target:
            if r1 == r0 or s0 == s1:
                return float(s1)
            return float(np.exp(np.log(s0) + (target - r0) / (r1 - r0) * (np.log(s1) - np.log(s0))))
    return None


def write_json(path: Path, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)
