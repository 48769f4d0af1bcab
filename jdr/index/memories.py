"""A mixture of memories (MoMA): several corpora, each encoded into its own store and index, searched as one.

A memory is an index file (faiss, from `jdr index`) or directory (SPANN, `jdr index --spann`) with its doc ids
beside it in `INDEX.ids.txt`, and a name (default: the index file name up to its first dot, `A.faiss` -> `A`).
`Memories.search` searches every memory (or a chosen subset) for the top-k and merges them by score: the memories
must share the embedding width and metric, i.e. come from the same encoder. A merged hit names its memory:
`Memories.qualified_ids` gives `"memory:docid"` (split at the first ":"; memory names cannot contain ":", doc
ids may). A memory can also be an embedding store dir (`jdr encode`), indexed in RAM when it is opened.

`Memories.mine` is the training side (the `memory` negatives source, `jdr.negatives.memory`): each query's top
candidates over the mixture, merged by score or with a quota per memory, with given rows (the query's positives)
excluded. `Memory.from_arrays` builds a memory from embeddings in RAM (the training corpus, re-encoded at each
ANCE refresh, joins the fixed memories that way).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from jdr.index import faiss_index
from jdr.index.quantized import QuantizedIndex, is_quantized
from jdr.index.spann import SpannIndex
from jdr.index.store import load_embeddings, load_ids

SEP = ":"


def ids_path(index_path: str | os.PathLike) -> Path:
    """The doc-ids file kept beside an index written by `jdr index`: row i of the index is line i."""
    return Path(f"{index_path}.ids.txt")


def open_index(path: str | os.PathLike) -> faiss.Index | SpannIndex | QuantizedIndex:
    """A quantized index directory (`jdr index --quantize`), a SPANN index directory or a faiss index file."""
    if is_quantized(path):
        return QuantizedIndex.load(path)
    return SpannIndex.load(path) if Path(path).is_dir() else faiss_index.load_index(path)


def is_store(path: str | os.PathLike) -> bool:
    """Whether `path` is an embedding store dir written by `jdr encode` (not an index)."""
    return (Path(path) / "embeddings.npy").is_file()


def split_id(qualified: str) -> tuple[str, str]:
    """`"memory:docid"` -> `("memory", "docid")`."""
    name, sep, doc = qualified.partition(SEP)
    if not sep:
        raise ValueError(f"{qualified!r} is not a memory-qualified id (memory{SEP}docid)")
    return name, doc


@dataclass
class Memory:
    """One memory: `name`, an open `index` (faiss or SPANN), its `doc_ids` (row i -> doc id) and the search
    parameters it uses unless a call gives others (`defaults`, e.g. `{"nprobe": 32}`; see `with_probe`)."""

    name: str
    index: faiss.Index | SpannIndex | QuantizedIndex
    doc_ids: list[str]
    defaults: Mapping[str, int | float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or SEP in self.name:
            raise ValueError(f"memory name {self.name!r} must be non-empty and free of {SEP!r}")
        if self.index.ntotal != len(self.doc_ids):
            raise ValueError(
                f"memory {self.name}: index holds {self.index.ntotal} vectors but there are {len(self.doc_ids)} doc ids"
            )

    @classmethod
    def load(cls, spec: str | os.PathLike, *, factory: str = "Flat") -> Memory:
        """From `"name=path"` or `path` (name = the file name up to its first dot): a faiss index file or SPANN dir
        with ids in `path.ids.txt`, or an embedding store dir (ids in its ids.txt), indexed here with `factory`."""
        name, sep, path = str(spec).partition("=")
        if not sep:
            name, path = Path(spec).name.split(".")[0], str(spec)
        if is_store(path):
            emb, ids = load_embeddings(path)
            return cls.from_arrays(name, emb, ids, factory)
        return cls(name, open_index(path), load_ids(ids_path(path)))

    @classmethod
    def from_arrays(
        cls, name: str, emb, doc_ids: Sequence[str], factory: str = "Flat", *, metric: str = "ip", seed: int = 0
    ) -> Memory:
        """A memory over `emb[N, d]` (row i = `doc_ids[i]`) in RAM: a faiss index from `factory` (built as
        `faiss_index.build_index` does, trained on all rows when the factory needs training)."""
        return cls(name, faiss_index.build_index(emb, factory, metric=metric, seed=seed), list(doc_ids))

    def with_probe(self, probe: int | None) -> Memory:
        """This memory searching `probe` lists per query by default: faiss IVF `nprobe`, SPANN `max_probe`; other
        indexes (Flat, HNSW) have no lists and are returned as they are. None keeps the index's own setting."""
        if probe is None:
            return self
        if isinstance(self.index, SpannIndex):
            return replace(self, defaults={**self.defaults, "max_probe": int(probe)})
        if isinstance(self.index, QuantizedIndex):
            return self
        if faiss.try_extract_index_ivf(self.index) is not None:
            return replace(self, defaults={**self.defaults, "nprobe": int(probe)})
        return self

    @property
    def metric(self) -> str:
        if isinstance(self.index, (SpannIndex, QuantizedIndex)):
            return self.index.metric
        return "ip" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"

    def search(
        self,
        queries,
        k: int,
        *,
        nprobe: int | None = None,
        efSearch: int | None = None,
        max_probe: int | None = None,
        eps2: float | None = None,
        rescore: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` -> `(scores[M, k], rows[M, k])`; faiss indexes take nprobe/efSearch, SPANN max_probe/eps2, a
        quantized index `rescore` (re-score the top k*rescore with the float query; a parameter left None takes
        this memory's `defaults`)."""
        given = dict(nprobe=nprobe, efSearch=efSearch, max_probe=max_probe, eps2=eps2)
        nprobe, efSearch, max_probe, eps2 = (self.defaults.get(p) if v is None else v for p, v in given.items())
        k = min(k, self.index.ntotal)
        if isinstance(self.index, QuantizedIndex):
            return self.index.search(queries, k, rescore=rescore or 0)
        if rescore:
            raise ValueError(f"memory {self.name}: --rescore needs an index built with `jdr index --quantize`")
        if isinstance(self.index, SpannIndex):
            hits = self.index.search(queries, k, eps2=eps2, **({} if max_probe is None else {"max_probe": max_probe}))
            return hits.scores, hits.rows
        try:
            return faiss_index.search(self.index, queries, k, nprobe=nprobe, efSearch=efSearch)
        except ValueError as e:
            raise ValueError(f"memory {self.name}: {e}") from None


class MemoryHits(NamedTuple):
    """Merged top-k: `scores[M, k]` best first, `memory[M, k]` index into `Memories.memories` and `rows[M, k]`
    row within that memory (both -1 where fewer than k were found)."""

    scores: np.ndarray
    memory: np.ndarray
    rows: np.ndarray


class Memories:
    """Several memories searched as one. All must have the same dimension and metric."""

    def __init__(self, memories: Sequence[Memory]):
        if not memories:
            raise ValueError("no memories given")
        names = [m.name for m in memories]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"memory names must be unique; repeated: {', '.join(dup)} (name them with name=path)")
        first = memories[0]
        for m in memories[1:]:
            if m.index.d != first.index.d or m.metric != first.metric:
                raise ValueError(
                    f"memory {m.name} ({m.metric}, d={m.index.d}) cannot be merged with "
                    f"{first.name} ({first.metric}, d={first.index.d}): encode both with one model"
                )
        self.memories = list(memories)
        self.metric, self.d = first.metric, first.index.d

    @classmethod
    def load(cls, specs: Sequence[str | os.PathLike]) -> Memories:
        """From `"name=path"` / `path` strings (see `Memory.load`)."""
        return cls([Memory.load(s) for s in specs])

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.memories]

    def select(self, names: Sequence[str] | None) -> list[int]:
        """Positions of the memories called `names` (all when None); an unknown name is an error."""
        if names is None:
            return list(range(len(self.memories)))
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"unknown memory {unknown[0]!r}; memories are {', '.join(self.names)}")
        return [self.names.index(n) for n in names]

    def search(self, queries, k: int, *, memories: Sequence[str] | None = None, **params) -> MemoryHits:
        """Merged top-`k` of `queries[M, d]` over the chosen `memories` (all when None): each memory's top-k
        (`Memory.search` with `params`), then the best k of their union by score (larger inner product, or
        smaller L2). Ties keep memory order."""
        chosen = self.select(memories)
        scores, mem, rows = [], [], []
        for i in chosen:
            s, r = self.memories[i].search(queries, k, **params)
            scores.append(s)
            rows.append(r)
            mem.append(np.full(r.shape, i, np.int64))
        s, m, r = (np.concatenate(a, axis=1) for a in (scores, mem, rows))
        larger = self.metric == "ip"
        s = np.where(r >= 0, s, -np.inf if larger else np.inf).astype(np.float32)
        best = np.argsort(-s if larger else s, axis=1, kind="stable")[:, :k]
        s, m, r = (np.take_along_axis(a, best, 1) for a in (s, m, r))
        found = r >= 0
        return MemoryHits(s, np.where(found, m, -1), np.where(found, r, -1))

    def mine(
        self,
        queries,
        *,
        depth: int,
        exclude: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        mix: Mapping[str, int] | None = None,
        **params,
    ) -> MemoryHits:
        """Candidates for `queries[M, d]`, best first: with `mix=None` the merged top-`depth` over every memory
        (MoMA's one ranking over the mixture); with `mix={"train": 100, "wiki": 50}` each named memory's own top
        `mix[name]` (0 or an unnamed memory: none), merged by score, width `sum(mix)`. `exclude[name]` = CSR
        `(offsets[M+1], rows)`: rows of that memory never returned for query i (`rows[offsets[i]:offsets[i+1]]`,
        e.g. its positives); each memory is asked for its count plus the most rows it excludes for one query, then
        filtered, so exclusion does not shorten the lists. Entries are -1 where a memory holds too few rows.
        `params`: search parameters for every memory (see `search`)."""
        if depth < 1:
            raise ValueError(f"mining depth must be >= 1, got {depth}")
        exclude = dict(exclude or {})
        quotas = {n: depth for n in self.names} if mix is None else dict(mix)
        self.select(list(quotas) + list(exclude))  # unknown names are errors
        if any(c < 0 for c in quotas.values()) or not sum(quotas.values()):
            raise ValueError(f"memory quotas {quotas} must be >= 0 and not all 0")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m_q, larger = len(queries), self.metric == "ip"
        worst = -np.inf if larger else np.inf
        scores, mem, rows = [], [], []
        for i, memory in enumerate(self.memories):
            count = quotas.get(memory.name, 0)
            if not count:
                continue
            offsets, excluded = exclude.get(memory.name, (np.zeros(m_q + 1, np.int64), np.zeros(0, np.int64)))
            offsets = np.asarray(offsets, np.int64)
            if offsets.shape != (m_q + 1,):
                raise ValueError(f"exclude[{memory.name!r}] offsets must be [{m_q + 1}], got shape {offsets.shape}")
            s, r = memory.search(queries, count + int(np.diff(offsets).max(initial=0)), **params)
            keep = (r >= 0) & ~_excluded(r, offsets, np.asarray(excluded, np.int64))
            order = np.argsort(~keep, axis=1, kind="stable")[:, :count]  # kept rows first, in rank order
            s, r, keep = (np.take_along_axis(a, order, 1) for a in (s, r, keep))
            pad = count - r.shape[1]  # a memory smaller than its count
            scores.append(np.pad(np.where(keep, s, worst), ((0, 0), (0, pad)), constant_values=worst))
            rows.append(np.pad(np.where(keep, r, -1), ((0, 0), (0, pad)), constant_values=-1))
            mem.append(np.full(rows[-1].shape, i, np.int64))
        s, m, r = (np.concatenate(a, axis=1) for a in (scores, mem, rows))
        best = np.argsort(-s if larger else s, axis=1, kind="stable")[:, : depth if mix is None else s.shape[1]]
        s, m, r = (np.take_along_axis(a, best, 1) for a in (s, m, r))
        found = r >= 0
        return MemoryHits(s.astype(np.float32), np.where(found, m, -1), np.where(found, r, -1))

    def qualified_ids(self, hits: MemoryHits) -> list[list[str]]:
        """`"memory:docid"` of each found hit, per query, best first."""
        return [
            [f"{self.memories[m].name}{SEP}{self.memories[m].doc_ids[r]}" for m, r in zip(mr, rr) if r >= 0]
            for mr, rr in zip(hits.memory, hits.rows)
        ]


def _excluded(rows: np.ndarray, offsets: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """bool `[M, K]`: `rows[i, j]` is one of query i's excluded rows `excluded[offsets[i]:offsets[i+1]]`."""
    counts = np.diff(offsets)
    width = int(counts.max(initial=0))
    if not width:
        return np.zeros(rows.shape, bool)
    padded = np.full((len(rows), width), -2, np.int64)  # -2 never equals a row or the -1 pad
    padded[np.arange(width)[None, :] < counts[:, None]] = excluded[offsets[0] : offsets[-1]]
    out = np.empty(rows.shape, bool)
    block = max(1, (1 << 24) // max(1, rows.shape[1] * width))  # bound the [block, K, width] comparison
    for a in range(0, len(rows), block):
        out[a : a + block] = (rows[a : a + block, :, None] == padded[a : a + block, None, :]).any(-1)
    return out
