"""A frozen document index for learning to retrieve (LTRe / ADORE / JPQ): search it with the current query
embeddings and build each query's retrieved candidate list, with the document vectors the loss scores against.

Two kinds of document vectors (the index itself never changes during training):
  * exact — `FixedIndex.from_embeddings`: the frozen passage tower's embeddings (ADORE). The index may be exact
    (Flat) or approximate for search only (HNSW, IVF, OPQ...: ADORE searched an OPQ index and scored the dense
    vectors).
  * reconstructions — `FixedIndex.load`: a compressed faiss index (`jdr index` PQ factories, or the IVF-PQ / PQ that
    `jdr vq train` exports from Distill-VQ) scores each document by its decoded vector, which is what the index's
    inner-product search ranks by (JPQ's setting; faiss's ADC score = q . reconstruction).
Knows nothing of jax: arrays in, numpy arrays out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from jdr.errors import DataError
from jdr.index.faiss_index import build_index, load_index
from jdr.index.store import load_ids

__all__ = ["FixedIndex", "reconstruct_all", "CANDIDATE_KEYS"]

# The arrays `FixedIndex.candidates` returns (and the host-search train step reads from its batch).
CANDIDATE_KEYS = ("cand_emb", "cand_relevant", "cand_valid")


def reconstruct_all(index: faiss.Index) -> np.ndarray:
    """Every stored vector as the index decodes it, `[ntotal, d]` float32 in the caller's space (an
    IndexPreTransform's OPQ rotation undone). IVF indexes get a direct map first (faiss needs one to reconstruct)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    try:
        return np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        raise ValueError(f"this faiss index cannot reconstruct its vectors: {reason}") from None


@dataclasses.dataclass
class FixedIndex:
    """`index` (faiss, inner product, row i = `ids[i]`), `vectors[N, d]` float32 the loss scores row i by, `nprobe`
    (IVF search-time probes; set once here so concurrent searches from several devices never write the index)."""

    index: faiss.Index
    vectors: np.ndarray
    ids: list[str]
    nprobe: int | None = None

    def __post_init__(self):
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        n, d = self.index.ntotal, self.index.d
        if self.vectors.shape != (n, d) or len(self.ids) != n:
            raise ValueError(
                f"FixedIndex: index holds {n} x {d}, vectors are {self.vectors.shape}, {len(self.ids)} ids"
            )
        if self.index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("FixedIndex: the index must rank by inner product (the loss scores q . vector)")
        if self.nprobe:
            ivf = faiss.try_extract_index_ivf(self.index)
            if ivf is None:
                raise ValueError(f"ltre.nprobe={self.nprobe} is set but the index has no IVF lists to probe")
            ivf.nprobe = int(self.nprobe)
        self._rows = {doc_id: i for i, doc_id in enumerate(self.ids)}

    @classmethod
    def from_embeddings(
        cls, embeddings, ids: Sequence[str], *, factory: str = "Flat", nprobe: int | None = None, seed: int = 0
    ) -> FixedIndex:
        """Index `embeddings[N, d]` (the frozen passage tower's) with `factory`; the loss scores the exact vectors."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        return cls(build_index(emb, factory, seed=seed), emb, list(ids), nprobe)

    @classmethod
    def load(cls, path: str | Path, *, ids_path: str | Path | None = None, nprobe: int | None = None) -> FixedIndex:
        """A faiss index file and its ids (`PATH.ids.txt` unless `ids_path`); the loss scores its reconstructions."""
        path = Path(path)
        index = load_index(path)
        ids_path = Path(ids_path) if ids_path is not None else Path(f"{path}.ids.txt")
        ids = load_ids(ids_path)
        if len(ids) != index.ntotal:
            raise DataError(ids_path, f"{len(ids)} ids but {path} holds {index.ntotal} vectors")
        return cls(index, reconstruct_all(index), ids, nprobe)

    def positive_rows(self, positives: Iterable[Iterable[str]], slots: int, *, where: str = "qrels") -> np.ndarray:
        """Rows of each query's positive doc ids, deduplicated, as `[len(positives), slots]` int32 padded with -1.
        An unknown id or more than `slots` positives is a one-line error naming `where`."""
        groups = [list(dict.fromkeys(doc_ids)) for doc_ids in positives]
        out = np.full((len(groups), slots), -1, np.int32)
        for i, doc_ids in enumerate(groups):
            if len(doc_ids) > slots:
                raise ValueError(f"{where}: a query has {len(doc_ids)} positives, more than ltre.max_positives={slots}")
            for j, doc_id in enumerate(doc_ids):
                if doc_id not in self._rows:
                    raise ValueError(f"{where}: positive doc id {doc_id!r} is not in the index")
                out[i, j] = self._rows[doc_id]
        return out

    def candidates(self, queries, positive_rows, k: int) -> dict[str, np.ndarray]:
        """Each query's retrieved list: the top-`k` rows of the index for `queries[B, d]`, then the rows of
        `positive_rows[B, P]` (-1 = empty slot) the search missed, compacted after them. Column c has rank c + 1.

        Returns `cand_emb[B, k+P, d]` float32 (the rows' `vectors`, zeros where empty), `cand_relevant[B, k+P]` and
        `cand_valid[B, k+P]` bool (an empty slot, or -1 from a search that found fewer than k, is invalid)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        pos = np.asarray(positive_rows, np.int64)
        if q.ndim != 2 or q.shape[1] != self.index.d or pos.ndim != 2 or pos.shape[0] != q.shape[0]:
            raise ValueError(
                f"candidates: queries {q.shape} / positive_rows {pos.shape} do not fit a {self.index.d}-d index"
            )
        _, rows = self.index.search(q, k)  # [B, k], -1 where the index returns fewer than k
        filled = pos >= 0
        hit = (rows[:, :, None] == pos[:, None, :]) & filled[:, None, :]  # [B, k, P]
        missing = filled & ~hit.any(axis=1)
        order = np.argsort(~missing, axis=1, kind="stable")  # the missed positives first, in their slot order
        appended = np.where(np.take_along_axis(missing, order, 1), np.take_along_axis(pos, order, 1), -1)
        cand = np.concatenate([rows, appended], axis=1)
        valid = cand >= 0
        relevant = np.concatenate([hit.any(axis=2), appended >= 0], axis=1) & valid
        emb = self.vectors[np.where(valid, cand, 0)]
        emb[~valid] = 0.0
        return {"cand_emb": emb, "cand_relevant": relevant, "cand_valid": valid}
