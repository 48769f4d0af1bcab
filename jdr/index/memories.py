"""A mixture of memories (MoMA): several corpora, each encoded into its own store and index, searched as one.

A memory is an index file (faiss, from `jdr index`) or directory (SPANN, `jdr index --spann`) with its doc ids
beside it in `INDEX.ids.txt`, and a name (default: the index file name up to its first dot, `A.faiss` -> `A`).
`Memories.search` searches every memory (or a chosen subset) for the top-k and merges them by score: the memories
must share the embedding width and metric, i.e. come from the same encoder. A merged hit names its memory:
`Memories.qualified_ids` gives `"memory:docid"` (split at the first ":"; memory names cannot contain ":", doc
ids may).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import faiss
import numpy as np

from jdr.index import faiss_index
from jdr.index.spann import SpannIndex
from jdr.index.store import load_ids

SEP = ":"


def ids_path(index_path: str | os.PathLike) -> Path:
    """The doc-ids file kept beside an index written by `jdr index`: row i of the index is line i."""
    return Path(f"{index_path}.ids.txt")


def open_index(path: str | os.PathLike) -> faiss.Index | SpannIndex:
    """A SPANN index directory or a faiss index file."""
    return SpannIndex.load(path) if Path(path).is_dir() else faiss_index.load_index(path)


def split_id(qualified: str) -> tuple[str, str]:
    """`"memory:docid"` -> `("memory", "docid")`."""
    name, sep, doc = qualified.partition(SEP)
    if not sep:
        raise ValueError(f"{qualified!r} is not a memory-qualified id (memory{SEP}docid)")
    return name, doc


@dataclass
class Memory:
    """One memory: `name`, an open `index` (faiss or SPANN) and its `doc_ids` (row i -> doc id)."""
    name: str
    index: faiss.Index | SpannIndex
    doc_ids: list[str]

    def __post_init__(self):
        if not self.name or SEP in self.name:
            raise ValueError(f"memory name {self.name!r} must be non-empty and free of {SEP!r}")
        if self.index.ntotal != len(self.doc_ids):
            raise ValueError(f"memory {self.name}: index holds {self.index.ntotal} vectors but there are "
                             f"{len(self.doc_ids)} doc ids")

    @classmethod
    def load(cls, spec: str | os.PathLike) -> "Memory":
        """From `"name=path"` or `path` (name = the file name up to its first dot); ids from `path.ids.txt`."""
        name, sep, path = str(spec).partition("=")
        if not sep:
            name, path = Path(spec).name.split(".")[0], str(spec)
        return cls(name, open_index(path), load_ids(ids_path(path)))

    @property
    def metric(self) -> str:
        if isinstance(self.index, SpannIndex):
            return self.index.metric
        return "ip" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"

    def search(self, queries, k: int, *, nprobe: int | None = None, efSearch: int | None = None,
               max_probe: int | None = None, eps2: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` -> `(scores[M, k], rows[M, k])`; faiss indexes take nprobe/efSearch, SPANN max_probe/eps2."""
        k = min(k, self.index.ntotal)
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
                raise ValueError(f"memory {m.name} ({m.metric}, d={m.index.d}) cannot be merged with "
                                 f"{first.name} ({first.metric}, d={first.index.d}): encode both with one model")
        self.memories = list(memories)
        self.metric, self.d = first.metric, first.index.d

    @classmethod
    def load(cls, specs: Sequence[str | os.PathLike]) -> "Memories":
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

    def qualified_ids(self, hits: MemoryHits) -> list[list[str]]:
        """`"memory:docid"` of each found hit, per query, best first."""
        return [[f"{self.memories[m].name}{SEP}{self.memories[m].doc_ids[r]}" for m, r in zip(mr, rr) if r >= 0]
                for mr, rr in zip(hits.memory, hits.rows)]
