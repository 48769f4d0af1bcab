"""SPANN-style memory-disk index: heads in RAM, posting lists of full vectors in a memory-mapped file.

Layout of an index directory (written atomically, one unit):
  meta.json          format, metric, shapes, build parameters and build statistics
  heads.npy [K, d]   head vectors (balanced hierarchical k-means centroids)       -- loaded into RAM
  offsets.npy [K+1]  list j is entries offsets[j]:offsets[j+1]                      -- loaded into RAM
  postings.npy [E,d] float32 vectors of all posting lists, list after list          -- memory-mapped ("disk")
  posting_ids.npy [E] int64 row id of each entry                                    -- memory-mapped ("disk")
The memory-mapped files stand for SPANN's SSD: search reads only the probed lists' byte ranges from them
(through the OS page cache, so a warm cache makes these reads memory reads). `SpannIndex.memory_bytes()` reports
bytes in RAM vs on "disk".

Build (SPANN, Chen et al. 2021, and SPTAG's static build):
  1. heads = `balanced_kmeans` (every head's cluster <= list_size rows);
  2. each vector's `candidates` nearest heads (faiss, exact), as SPANN distances (`clustering.spann_distance`);
  3. `select_replicas`: posting-list closure + RNG rule, at most `max_replicas` lists per vector;
  4. lists longer than `posting_limit` keep every primary (nearest-head) entry and their closest replicas.
Search: `probe_lists` (query-aware pruning), then an exact scan of the probed lists, de-duplicated top-k.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from jdr.index.clustering import METRICS, balanced_kmeans, faiss_single_thread, flat_index, spann_distance
from jdr.index.faiss_index import _as_matrix
from jdr.io import atomic_dir

FORMAT = "jdr-spann"
VERSION = 1
_FILES = ("meta.json", "heads.npy", "offsets.npy", "postings.npy", "posting_ids.npy")


def head_candidates(x, heads: np.ndarray, n: int, metric: str, *, chunk: int = 65_536):
    """The `n` nearest heads of every row of `x[N, d]` -> `(dist[N, n] float32 ascending, ids[N, n] int64)`.
    For "ip" rows are L2-normalised first (SPANN distances assume unit vectors; rankings are unchanged)."""
    index = flat_index(heads, metric)
    n = min(n, len(heads))
    dist = np.empty((x.shape[0], n), np.float32)
    ids = np.empty((x.shape[0], n), np.int64)
    for s in range(0, x.shape[0], chunk):
        block = np.array(x[s : s + chunk], dtype=np.float32)
        if metric == "ip":
            faiss.normalize_L2(block)
        scores, ids[s : s + chunk] = index.search(block, n)
        dist[s : s + chunk] = spann_distance(scores, metric)
    return dist, ids


def head_distances(heads: np.ndarray, metric: str) -> np.ndarray:
    """[K, K] SPANN distances between heads (the RNG rule's dist(c_i, c_j))."""
    return spann_distance(
        faiss.pairwise_distances(heads, heads, faiss.METRIC_L2) if metric == "l2" else heads @ heads.T, metric
    ).astype(np.float32)


def select_replicas(
    cand_dist: np.ndarray,
    cand_ids: np.ndarray,
    head_dist: np.ndarray,
    *,
    eps1: float,
    max_replicas: int,
    rng: bool = True,
    chunk: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Posting lists of each vector -> `(heads[N, max_replicas] int64, dist[N, max_replicas])`, nearest first,
    padded with head -1 / distance inf.

    `cand_dist/cand_ids [N, C]`: the vector's nearest heads, ascending. The nearest head is always taken;
    candidate j (in order) is added while fewer than `max_replicas` are taken, if
      closure:  dist(x, c_j) <= (1 + eps1) * dist(x, c_nearest), and
      RNG rule: no already-taken head c_i has dist(c_i, c_j) < dist(x, c_j)  (skipped when `rng` is False),
    so replicas go to heads in different directions from x. Batched over vectors: one numpy step per
    candidate position, on the rows whose closure still holds (the candidates are sorted, so once a row fails
    the closure it fails it for every later candidate)."""
    n, c = cand_ids.shape
    out = np.full((n, max_replicas), -1, np.int64)
    out_d = np.full((n, max_replicas), np.inf, np.float32)
    out[:, 0], out_d[:, 0] = cand_ids[:, 0], cand_dist[:, 0]
    for s in range(0, n, chunk):
        dist, ids, sel, sel_d = (
            cand_dist[s : s + chunk],
            cand_ids[s : s + chunk],
            out[s : s + chunk],
            out_d[s : s + chunk],
        )
        taken = np.ones(len(ids), np.int64)
        bound = (1.0 + eps1) * dist[:, 0]
        for j in range(1, c):
            rows = np.flatnonzero((taken < max_replicas) & (dist[:, j] <= bound) & (ids[:, j] >= 0))
            if rows.size == 0:
                break
            cj, dj = ids[rows, j], dist[rows, j]
            if rng:
                chosen = sel[rows]  # [r, max_replicas], -1 beyond `taken`
                near = (head_dist[chosen, cj[:, None]] < dj[:, None]) & (chosen >= 0)
                ok = ~near.any(1)
                rows, cj, dj = rows[ok], cj[ok], dj[ok]
            sel[rows, taken[rows]] = cj
            sel_d[rows, taken[rows]] = dj
            taken[rows] += 1
    return out, out_d


def probe_lists(q_dist: np.ndarray, q_ids: np.ndarray, *, eps2: float | None, max_probe: int) -> np.ndarray:
    """Query-aware pruning -> `[M, max_probe]` head ids to probe, -1 where pruned.

    `q_dist/q_ids [M, >= max_probe]`: the query's nearest heads, ascending. Head j is probed iff it is among
    the first `max_probe` and dist(q, c_j) <= (1 + eps2) * dist(q, c_nearest); eps2=None probes all `max_probe`."""
    d, ids = q_dist[:, :max_probe], q_ids[:, :max_probe]
    keep = ids >= 0
    if eps2 is not None:
        keep &= d <= (1.0 + eps2) * d[:, :1]
    return np.where(keep, ids, -1)


def _posting_entries(replicas: np.ndarray, rep_dist: np.ndarray, n_heads: int, posting_limit: int | None):
    """Entries of all lists, list after list -> `(rows[E], heads[E])`, applying `posting_limit`: an overfull
    list keeps all its primary entries (no vector is ever dropped) and then its closest replicas."""
    valid = replicas >= 0
    rows = np.nonzero(valid)[0]
    heads = replicas[valid]
    primary = np.nonzero(valid)[1] == 0
    dist = rep_dist[valid]
    order = np.lexsort((dist, ~primary, heads))
    rows, heads, primary = rows[order], heads[order], primary[order]
    if posting_limit is not None:
        starts = np.searchsorted(heads, np.arange(n_heads))
        rank = np.arange(len(heads)) - starts[heads]
        keep = primary | (rank < posting_limit)
        rows, heads = rows[keep], heads[keep]
    return rows, heads


class SpannHits(NamedTuple):
    """Search result: `scores[M, k]` (inner product, or squared L2 for "l2"; best first), `rows[M, k]` (-1 past
    the vectors found), `scanned[M]` posting entries read per query, `probed[M]` lists read per query."""

    scores: np.ndarray
    rows: np.ndarray
    scanned: np.ndarray
    probed: np.ndarray


def build_spann(
    x,
    path: str | os.PathLike,
    *,
    metric: str = "ip",
    list_size: int = 1000,
    eps1: float = 0.1,
    max_replicas: int = 8,
    rng: bool = True,
    posting_limit: int | None = None,
    candidates: int = 64,
    branching: int = 32,
    niter: int = 20,
    seed: int = 0,
    member_heads: bool = False,
    heads: np.ndarray | None = None,
    head_cands: tuple[np.ndarray, np.ndarray] | None = None,
) -> SpannIndex:
    """Build a SPANN index over `x[N, d]` (float32, may be a memmap) into directory `path` and open it.

    Heads are the balanced k-means leaf means, or with `member_heads` the data vector nearest each mean (SPTAG's
    choice; with mean heads the RNG rule rejects nearly every replica on clustered data, since a mean is nearer
    its sibling means than any member is).
    `list_size` bounds each head's cluster (balanced k-means); `posting_limit` bounds each list after
    duplication (default `max_replicas * list_size`); `candidates` heads per vector are considered for
    replicas. `heads` and `head_cands` (from `balanced_kmeans` / `head_candidates`) may be passed to reuse
    them across builds that differ only in eps1 / max_replicas / rng (the benchmarks' sweeps)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D [N, d] array, got shape {x.shape}")
    if max_replicas < 1 or eps1 < 0:
        raise ValueError(f"need max_replicas >= 1 and eps1 >= 0, got {max_replicas} and {eps1}")
    if metric == "ip":
        norms = np.linalg.norm(np.asarray(x[: min(len(x), 10_000)], np.float32), axis=1)
        if np.abs(norms - 1).max() > 1e-3:
            raise ValueError(
                f"metric 'ip' needs unit-norm vectors (norms in [{norms.min():.3g}, {norms.max():.3g}]);"
                " normalise them or use metric 'l2'"
            )
    t0 = time.perf_counter()
    if heads is None:
        heads, _ = balanced_kmeans(
            x, list_size, metric=metric, branching=branching, niter=niter, seed=seed, member_heads=member_heads
        )
    t_heads = time.perf_counter() - t0
    if heads.ndim != 2 or heads.shape[1] != x.shape[1]:
        raise ValueError(f"heads have shape {heads.shape}, vectors have dimension {x.shape[1]}")
    cand_dist, cand_ids = head_cands if head_cands is not None else head_candidates(x, heads, candidates, metric)
    replicas, rep_dist = select_replicas(
        cand_dist, cand_ids, head_distances(heads, metric), eps1=eps1, max_replicas=max_replicas, rng=rng
    )
    limit = max_replicas * list_size if posting_limit is None else posting_limit
    rows, lists = _posting_entries(replicas, rep_dist, len(heads), limit)
    offsets = np.zeros(len(heads) + 1, np.int64)
    np.cumsum(np.bincount(lists, minlength=len(heads)), out=offsets[1:])
    sizes = np.diff(offsets)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "metric": metric,
        "dim": int(x.shape[1]),
        "count": int(len(x)),
        "entries": int(len(rows)),
        "heads": int(len(heads)),
        "params": {
            "list_size": list_size,
            "eps1": eps1,
            "max_replicas": max_replicas,
            "rng": rng,
            "posting_limit": limit,
            "candidates": int(cand_ids.shape[1]),
            "branching": branching,
            "niter": niter,
            "seed": seed,
            "member_heads": member_heads,
        },
        "stats": {
            "duplication": len(rows) / len(x),
            "list_size_max": int(sizes.max()),
            "list_size_mean": float(sizes.mean()),
            "list_size_p99": float(np.percentile(sizes, 99)),
            "heads_seconds": t_heads,
        },
    }
    with atomic_dir(path) as tmp:
        np.save(tmp / "heads.npy", heads)
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "posting_ids.npy", rows.astype(np.int64))
        post = np.lib.format.open_memmap(
            tmp / "postings.npy", mode="w+", dtype=np.float32, shape=(len(rows), x.shape[1])
        )
        for s in range(0, len(rows), 65_536):
            post[s : s + 65_536] = x[rows[s : s + 65_536]]
        post.flush()
        del post
        meta["stats"]["build_seconds"] = time.perf_counter() - t0
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return SpannIndex.load(path)


class SpannIndex:
    """An opened SPANN index directory (see the module docstring). `ntotal`, `d`, `metric` as for faiss."""

    def __init__(
        self,
        path: Path,
        meta: dict,
        heads: np.ndarray,
        offsets: np.ndarray,
        postings: np.ndarray,
        posting_ids: np.ndarray,
    ):
        self.path, self.meta, self.heads, self.offsets = path, meta, heads, offsets
        self.postings, self.posting_ids = postings, posting_ids
        self.metric, self.d, self.ntotal = meta["metric"], meta["dim"], meta["count"]
        self._head_index = flat_index(heads, self.metric)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpannIndex:
        """Open `path` (heads and offsets read into RAM, lists memory-mapped); a missing, corrupt or
        inconsistent directory raises ValueError/FileNotFoundError with one line naming it."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such SPANN index directory")
        missing = [f for f in _FILES if not (path / f).is_file()]
        if missing:
            raise ValueError(f"{path}: not a SPANN index (missing {', '.join(missing)})")
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"meta.json is not {FORMAT} version {VERSION}")
            heads = np.load(path / "heads.npy", allow_pickle=False)
            offsets = np.load(path / "offsets.npy", allow_pickle=False)
            postings = np.load(path / "postings.npy", mmap_mode="r", allow_pickle=False)
            ids = np.load(path / "posting_ids.npy", mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}: corrupt SPANN index ({msg})") from None
        k, d, e = meta["heads"], meta["dim"], meta["entries"]
        problem = (
            f"heads.npy has shape {heads.shape}, meta.json says ({k}, {d})"
            if heads.shape != (k, d)
            else f"offsets.npy has shape {offsets.shape}, expected ({k + 1},)"
            if offsets.shape != (k + 1,)
            else "offsets.npy is not a non-decreasing 0..entries range"
            if offsets[0] != 0 or offsets[-1] != e or (np.diff(offsets) < 0).any()
            else f"postings.npy has shape {postings.shape}, expected ({e}, {d})"
            if postings.shape != (e, d)
            else f"posting_ids.npy has shape {ids.shape}, expected ({e},)"
            if ids.shape != (e,)
            else f"metric {meta['metric']!r} is not one of {METRICS}"
            if meta["metric"] not in METRICS
            else None
        )
        if problem:
            raise ValueError(f"{path}: corrupt SPANN index ({problem})")
        return cls(path, meta, heads.astype(np.float32), offsets, postings, ids)

    def memory_bytes(self) -> dict:
        """`{"ram": heads + offsets + the head search index, "disk": posting vectors + posting ids}` in bytes."""
        return {
            "ram": int(self.heads.nbytes * 2 + self.offsets.nbytes),  # heads + their faiss Flat copy
            "disk": int(self.postings.nbytes + self.posting_ids.nbytes),
        }

    def search(self, queries, k: int, *, max_probe: int = 8, eps2: float | None = None) -> SpannHits:
        """Top-`k` of `queries[M, d]` by exact distance over the probed lists (`probe_lists` rule), each vector
        counted once however many probed lists hold it. Lists are read once per batch: every probed list is
        scanned for all queries that probe it (faiss.knn per list), then per-query results are merged."""
        q = _as_matrix(queries, "queries", self.d)
        if k < 1 or max_probe < 1:
            raise ValueError(f"k and max_probe must be >= 1, got {k} and {max_probe}")
        routed = q.copy()
        if self.metric == "ip":
            faiss.normalize_L2(routed)  # SPANN distances assume unit queries; the final scores use q as given
        scores, ids = self._head_index.search(routed, min(max_probe, len(self.heads)))
        probes = probe_lists(spann_distance(scores, self.metric), ids, eps2=eps2, max_probe=max_probe)
        m, p = probes.shape
        worst = -np.inf if self.metric == "ip" else np.inf
        buf_s = np.full((m, p * k), worst, np.float32)
        buf_r = np.full((m, p * k), -1, np.int64)
        qi, slot = np.nonzero(probes >= 0)
        lists = probes[qi, slot]
        sizes = np.diff(self.offsets)
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        order = np.argsort(lists, kind="stable")
        qi, slot, lists = qi[order], slot[order], lists[order]
        bounds = np.flatnonzero(np.diff(lists)) + 1
        with faiss_single_thread():
            for grp in np.split(np.arange(len(lists)), bounds):
                j = lists[grp[0]] if grp.size else 0
                lo, hi = self.offsets[j], self.offsets[j + 1]
                if grp.size == 0 or hi == lo:
                    continue
                kk = int(min(k, hi - lo))
                d, r = faiss.knn(q[qi[grp]], np.asarray(self.postings[lo:hi]), kk, metric=metric)
                cols = slot[grp][:, None] * k + np.arange(kk)
                buf_s[qi[grp][:, None], cols] = d
                buf_r[qi[grp][:, None], cols] = np.asarray(self.posting_ids[lo:hi])[r]
        top_s, top_r = _dedup_topk(buf_s, buf_r, k, largest=self.metric == "ip")
        scanned = np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(1)
        return SpannHits(top_s, top_r, scanned, (probes >= 0).sum(1))


def _dedup_topk(scores: np.ndarray, rows: np.ndarray, k: int, *, largest: bool):
    """Per row of `scores/rows [M, C]` the best `k` distinct rows (-1 = empty) -> `(scores[M, k], rows[M, k])`."""
    worst = -np.inf if largest else np.inf
    by_id = np.argsort(rows, axis=1, kind="stable")
    ids = np.take_along_axis(rows, by_id, 1)
    dup = np.zeros_like(ids, dtype=bool)
    dup[:, 1:] = (ids[:, 1:] == ids[:, :-1]) | (ids[:, 1:] < 0)
    dup[:, 0] = ids[:, 0] < 0
    s = np.take_along_axis(scores, by_id, 1)
    s[dup] = worst
    best = np.argsort(-s if largest else s, axis=1, kind="stable")[:, :k]
    out_s = np.take_along_axis(s, best, 1)
    out_r = np.where(np.isfinite(out_s), np.take_along_axis(ids, best, 1), -1)
    if out_s.shape[1] < k:  # fewer candidates than k in total
        pad = k - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=worst)
        out_r = np.pad(out_r, ((0, 0), (0, pad)), constant_values=-1)
    return out_s, out_r
