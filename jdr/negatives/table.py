"""`NegativesTable`: per training query and per source, a ranked list of candidate negatives (corpus rows).

A table is immutable and versioned: a refresh builds a new table and the training loop swaps its reference
between steps, so a sampler never sees a half-updated table. Candidates are corpus ROW indices (int32, -1
padded), positives are removed when the table is built and checked again on construction.

Rows past the training corpus name documents of augmentation memories (`memory_ids`, the `memory` source of
`jdr.negatives.memory`): the training corpus keeps its plain ids and rows [0, N); memory documents are rows N, N+1,
... with ids `"memory:docid"`. Positives and `random` draws stay in the training corpus.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

RANDOM = "random"  # uniform over the corpus minus the query's positives; stores no candidates
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_BLOCK_ELEMENTS = 1 << 24  # bound on the [block, K, max_pos] comparison tensor in `clean_candidates`


def positives_csr(
    qids: Sequence[str], qrels: Mapping[str, Mapping[str, int]], corpus_index: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each query's positives (relevance > 0) as CSR: `(offsets[Q+1] int64, rows[P] int32)`.

    Query i's positives are `rows[offsets[i]:offsets[i+1]]`, sorted. A judged doc missing from the corpus or a
    query missing from `qrels` is a ValueError naming it.
    """
    offsets = np.zeros(len(qids) + 1, dtype=np.int64)
    rows: list[int] = []
    for i, qid in enumerate(qids):
        if qid not in qrels:
            raise ValueError(f"training query {qid!r} has no qrels")
        found = []
        for docid, rel in qrels[qid].items():
            if rel > 0:
                if docid not in corpus_index:
                    raise ValueError(f"qrels[{qid!r}] names doc {docid!r}, which is not in the corpus")
                found.append(corpus_index[docid])
        rows.extend(sorted(set(found)))
        offsets[i + 1] = len(rows)
    return offsets, np.asarray(rows, dtype=np.int32)


def _blocks(rows: np.ndarray, pos_offsets: np.ndarray):
    """`(positives per query, max positives, queries per block)`: blocks bound the [b, K, max_pos] comparison."""
    counts = np.diff(pos_offsets)
    max_pos = int(counts.max(initial=0))
    q, k = rows.shape
    block = max(1, _BLOCK_ELEMENTS // max(1, k * max(1, max_pos)))
    return counts, max_pos, block


def _positive_mask(r: np.ndarray, start: int, pos_offsets: np.ndarray, pos_rows: np.ndarray, max_pos: int):
    """`[b, K]` mask of entries of `r` (queries start..start+b) that are positives of their query."""
    if not max_pos:
        return np.zeros(r.shape, dtype=bool)
    # padded positives per query; -2 never equals a row or the -1 pad
    pos = np.full((len(r), max_pos), -2, dtype=np.int64)
    c = np.diff(pos_offsets[start : start + len(r) + 1])
    pos[np.arange(max_pos)[None, :] < c[:, None]] = pos_rows[pos_offsets[start] : pos_offsets[start + len(r)]]
    return (r[:, :, None] == pos[:, None, :]).any(-1)


def _check_rows(name: str, rows: np.ndarray, pos_offsets: np.ndarray, pos_rows: np.ndarray, n: int) -> None:
    """Raise if `rows` holds a row outside [-1, n), a gap, or a positive of its query (repeats are not checked:
    that needs a sort; `create` removes them)."""
    if not rows.size:
        return
    if rows.min() < -1 or rows.max() >= n:
        raise ValueError(f"candidates[{name!r}] holds rows outside [-1, {n})")
    valid = rows >= 0
    if (valid[:, 1:] & ~valid[:, :-1]).any():  # sampling relies on left-compacted lists
        raise ValueError(f"candidates[{name!r}] has a -1 before a candidate; build tables with NegativesTable.create")
    _, max_pos, block = _blocks(rows, pos_offsets)
    for start in range(0, len(rows), block):
        r = rows[start : start + block].astype(np.int64)
        if _positive_mask(r, start, pos_offsets, pos_rows, max_pos).any():
            raise ValueError(f"candidates[{name!r}] holds a positive; build tables with NegativesTable.create")


def clean_candidates(
    rows: np.ndarray, pos_offsets: np.ndarray, pos_rows: np.ndarray, depth: int, values: np.ndarray | None = None
):
    """Ranked rows `[Q, K]` -> `[Q, depth]` int32: positives, -1 and repeats removed, order kept, -1 padded.

    Every source passes its raw ranking through here, so "positives never included" has one implementation.
    Search K = depth + max positives per query to still have `depth` candidates after the filter. With
    `values[Q, K]` (e.g. the retriever's scores, aligned with `rows`), returns `(rows, values[Q, depth])`, the
    values moved with their rows (NaN where a row is -1).
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] != len(pos_offsets) - 1:
        raise ValueError(f"candidate rows must be [num_queries={len(pos_offsets) - 1}, K], got shape {rows.shape}")
    rows = rows.astype(np.int64, copy=False)
    out = np.full((rows.shape[0], depth), -1, dtype=np.int32)
    if values is not None:
        values = np.asarray(values, dtype=np.float32)
        if values.shape != rows.shape:
            raise ValueError(f"candidate values {values.shape} are not aligned with rows {rows.shape}")
        out_values = np.full((rows.shape[0], depth), np.nan, dtype=np.float32)
    _, max_pos, block = _blocks(rows, pos_offsets)
    for start in range(0, rows.shape[0], block):
        r = rows[start : start + block]
        keep = (r >= 0) & ~_positive_mask(r, start, pos_offsets, pos_rows, max_pos)
        # first occurrence of each value: a stable sort puts the earliest column first in each run
        order = np.argsort(r, axis=1, kind="stable")
        s = np.take_along_axis(r, order, axis=1)
        first = np.ones_like(s, dtype=bool)
        first[:, 1:] = s[:, 1:] != s[:, :-1]
        unique = np.empty_like(first)
        np.put_along_axis(unique, order, first, axis=1)
        keep &= unique
        perm = np.argsort(~keep, axis=1, kind="stable")[:, :depth]
        kept = np.take_along_axis(r, perm, axis=1)
        kept_mask = np.take_along_axis(keep, perm, axis=1)
        kept[~kept_mask] = -1
        out[start : start + len(r), : kept.shape[1]] = kept
        if values is not None:
            v = np.take_along_axis(values[start : start + len(r)], perm, axis=1)
            out_values[start : start + len(r), : v.shape[1]] = np.where(kept_mask, v, np.nan)
    return out if values is None else (out, out_values)


def _frozen(a: np.ndarray, dtype) -> np.ndarray:
    if isinstance(a, np.ndarray) and a.dtype == dtype and not a.flags.writeable:
        return a  # already frozen (e.g. dataclasses.replace of a table): share, do not copy
    a = np.array(a, dtype=dtype, copy=True)
    a.flags.writeable = False
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class NegativesTable:
    """Negatives for the training queries `qids` (order fixed), drawn from ranked sources and/or `random`.

    `candidates[name]` is `[Q, K]` int32 corpus rows, best first, -1 padded, no positives. `counts[name]` is how
    many negatives each query gets from that source per sample (`random` needs no candidates); `depth` is the
    ranked prefix sampled from (ANCE: 200). Sources are drawn in sorted-name order with `random` last, so a
    table samples identically after a checkpoint round trip. `timings` (encode_s, index_s, mine_s, ...) is
    informational and not checkpointed. `memory_ids`: ids of the rows after the corpus (augmentation memories'
    documents, `"memory:docid"`): candidates may name them, positives and `random` draws never do. Build with
    `NegativesTable.create`.
    """

    qids: tuple[str, ...]
    corpus_ids: tuple[str, ...]
    pos_offsets: np.ndarray  # [Q+1] int64, CSR offsets into pos_rows
    pos_rows: np.ndarray  # [P] int32
    candidates: Mapping[str, np.ndarray]
    counts: Mapping[str, int]
    depth: int
    version: int = 0
    source: str = ""
    created_step: int = 0
    timings: Mapping[str, float] | None = None
    memory_ids: tuple[str, ...] = ()

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        set_("qids", tuple(self.qids))
        set_("corpus_ids", tuple(self.corpus_ids))
        set_("memory_ids", tuple(self.memory_ids))
        n, q = len(self.corpus_ids), len(self.qids)
        set_("pos_offsets", _frozen(self.pos_offsets, np.int64))
        set_("pos_rows", _frozen(self.pos_rows, np.int32))
        if self.pos_offsets.shape != (q + 1,) or self.pos_offsets[-1] != len(self.pos_rows):
            raise ValueError(f"positives CSR does not match {q} queries")
        counts = {str(k): int(v) for k, v in self.counts.items()}
        for name, c in counts.items():
            if not _NAME.match(name) or c < 0:
                raise ValueError(f"negatives count {name}={c}: names are lowercase identifiers, counts >= 0")
        if sum(counts.values()) < 1:
            raise ValueError(f"negatives counts {counts} ask for no negatives")
        ranked = sorted(k for k in counts if k != RANDOM)
        if sorted(self.candidates) != ranked:
            raise ValueError(f"candidates for sources {sorted(self.candidates)} but counts name {ranked}")
        if self.depth < 1:
            raise ValueError(f"negatives depth must be >= 1, got {self.depth}")
        cands = {}
        for name in ranked:
            c = _frozen(self.candidates[name], np.int32)
            if c.ndim != 2 or c.shape[0] != q:
                raise ValueError(f"candidates[{name!r}] must be [{q}, K], got shape {c.shape}")
            _check_rows(name, c, self.pos_offsets, self.pos_rows, n + len(self.memory_ids))
            cands[name] = c
        set_("candidates", MappingProxyType(cands))
        set_("counts", MappingProxyType({k: counts[k] for k in ranked + ([RANDOM] if RANDOM in counts else [])}))
        if self.timings is not None:
            set_("timings", MappingProxyType({str(k): float(v) for k, v in self.timings.items()}))
        set_("_qindex", {qid: i for i, qid in enumerate(self.qids)})
        if len(self._qindex) != q:
            raise ValueError("training query ids repeat")

    @classmethod
    def create(
        cls,
        qids: Sequence[str],
        corpus_ids: Sequence[str],
        qrels: Mapping[str, Mapping[str, int]],
        candidates: Mapping[str, np.ndarray],
        counts: Mapping[str, int],
        depth: int,
        *,
        corpus_index: Mapping[str, int] | None = None,
        version: int = 0,
        source: str = "",
        created_step: int = 0,
        timings: Mapping[str, float] | None = None,
        memory_ids: Sequence[str] = (),
    ) -> NegativesTable:
        """Build a table from raw rankings: `candidates[name]` is `[Q, K]` corpus rows (best first, -1 allowed,
        positives allowed: they are filtered here). `corpus_index` (doc id -> row) saves rebuilding it.
        `memory_ids`: the documents of rows `len(corpus_ids)...` (see the class docstring)."""
        if corpus_index is None:
            corpus_index = {d: i for i, d in enumerate(corpus_ids)}
        offsets, pos = positives_csr(qids, qrels, corpus_index)
        # each source keeps its own width: extra stored depth is kept, a narrower list (a file's 8 negatives under
        # depth 200) is not padded to `depth` (-1 columns cost 4 bytes a query each and sample nothing)
        cleaned = {k: clean_candidates(c, offsets, pos, max(1, np.shape(c)[1])) for k, c in candidates.items()}
        return cls(
            qids,
            corpus_ids,
            offsets,
            pos,
            cleaned,
            counts,
            depth,
            version,
            source or _default_source(counts),
            created_step,
            timings,
            tuple(memory_ids),
        )

    @property
    def num_negatives(self) -> int:
        """Negatives per `sample` call: the sum of the per-source counts."""
        return sum(self.counts.values())

    def positives(self, qid: str) -> np.ndarray:
        """Sorted corpus rows of `qid`'s positives."""
        i = self._row(qid)
        return self.pos_rows[self.pos_offsets[i] : self.pos_offsets[i + 1]]

    def doc_id(self, row: int) -> str:
        """The id of table row `row`: a corpus doc id, or past the corpus a memory document's `"memory:docid"`."""
        n = len(self.corpus_ids)
        return self.corpus_ids[row] if row < n else self.memory_ids[row - n]

    def ranked(self, qid: str, source: str) -> list[str]:
        """`qid`'s stored candidates of `source`, best first, as doc ids (for inspection and tests)."""
        c = self.candidates[source][self._row(qid)]
        return [self.doc_id(r) for r in c[c >= 0].tolist()]

    def sample_rows(self, qid: str, rng: np.random.Generator) -> np.ndarray:
        """`num_negatives` distinct corpus rows for `qid`, none a positive, grouped by source (sorted names,
        `random` last). Each source draws its count without replacement from its top-`depth` candidates not
        already drawn; a shortfall and the `random` count are drawn uniformly from the rest of the corpus.
        Deterministic for a given state of `rng`."""
        i = self._row(qid)
        excluded = set(self.pos_rows[self.pos_offsets[i] : self.pos_offsets[i + 1]].tolist())
        chosen: list[int] = []
        short = 0
        for name, count in self.counts.items():
            if name == RANDOM:
                short += count
                continue
            top = self.candidates[name][i, : self.depth]
            m = int(np.count_nonzero(top >= 0))  # candidates are left-compacted and hold no positives
            # a uniform ordered draw, minus rows another source already gave, is a uniform draw from the rest;
            # drawing count + len(chosen) keeps this O(negatives) rather than O(depth)
            drawn = top[rng.choice(m, size=min(m, count + len(chosen)), replace=False)].tolist() if m else []
            taken = 0
            for r in drawn:
                if taken < count and r not in excluded:
                    chosen.append(r)
                    excluded.add(r)
                    taken += 1
            short += count - taken
        if short:
            n = len(self.corpus_ids)
            if n - len(excluded) < short:
                raise ValueError(
                    f"query {qid!r}: corpus of {n} docs has too few non-positive docs for "
                    f"{self.num_negatives} negatives"
                )
            while short:
                # rejection sampling: O(negatives), not O(corpus), since excluded rows are few
                for r in rng.integers(0, n, size=2 * short + 4).tolist():
                    if r not in excluded:
                        chosen.append(r)
                        excluded.add(r)
                        short -= 1
                        if not short:
                            break
        return np.asarray(chosen, dtype=np.int64)

    def sample(self, qid: str, rng: np.random.Generator) -> list[str]:
        """`sample_rows` as doc ids: exactly `num_negatives` distinct non-positive docs for `qid`."""
        return [self.doc_id(r) for r in self.sample_rows(qid, rng).tolist()]

    def replace_candidates(
        self,
        source: str,
        rows: np.ndarray,
        query_mask: np.ndarray | None = None,
        *,
        counts: Mapping[str, int] | None = None,
        **fields,
    ) -> NegativesTable:
        """A new table whose `source` candidates are `rows[Q, K]` (raw ranking, cleaned here); with `query_mask[Q]`
        only those queries' rows change (partial refresh). `counts` replaces the sampling counts; `fields` sets
        version / created_step / timings / source."""
        counts = dict(self.counts if counts is None else counts)
        width = max(self.depth, np.shape(rows)[1])
        new = clean_candidates(rows, self.pos_offsets, self.pos_rows, width)
        if query_mask is not None:
            if source not in self.candidates:
                raise ValueError(f"partial refresh of source {source!r}, which the table does not hold")
            old = self.candidates[source]
            merged = np.full((len(self.qids), max(width, old.shape[1])), -1, dtype=np.int32)
            merged[:, : old.shape[1]] = old
            merged[query_mask] = -1
            merged[query_mask, : new.shape[1]] = new[query_mask]
            new = merged
        cands = {k: v for k, v in self.candidates.items() if k in counts and k != source}
        if source in counts:
            cands[source] = new
        fields.setdefault("source", _default_source(counts))
        return dataclasses.replace(self, candidates=cands, counts=counts, **fields)

    def to_arrays(self) -> dict:
        """The table as a nested dict of integer numpy arrays (orbax-checkpointable; no strings, no pickle).

        Queries are stored as indexes into their sorted order (= `sorted(qrels)` of the training qrels), the
        source name as UTF-8 bytes, the memory documents as their count and a CRC32 of their ids (`meta[4:6]`; a
        restore needs the same memories); `timings` is dropped.
        """
        order = {q: i for i, q in enumerate(sorted(self.qids))}
        return {
            "qid_sorted_index": np.asarray([order[q] for q in self.qids], dtype=np.int64),
            "pos_offsets": np.array(self.pos_offsets),
            "pos_rows": np.array(self.pos_rows),
            "candidates": {k: np.array(v) for k, v in self.candidates.items()},
            "counts": {k: np.asarray(v, dtype=np.int64) for k, v in self.counts.items()},
            "meta": np.asarray(
                [
                    self.version,
                    self.created_step,
                    self.depth,
                    len(self.corpus_ids),
                    len(self.memory_ids),
                    _ids_crc(self.memory_ids),
                ],
                dtype=np.int64,
            ),
            "source": np.frombuffer(self.source.encode(), dtype=np.uint8).copy(),
        }

    @classmethod
    def from_arrays(
        cls,
        d: Mapping,
        corpus_ids: Sequence[str],
        qrels: Mapping[str, Mapping[str, int]],
        memory_ids: Sequence[str] = (),
    ) -> NegativesTable:
        """Inverse of `to_arrays` given the same training data (and memory documents). `qrels` holds exactly the
        table's training queries; a table that does not match the corpus, the memories or the qrels is a ValueError.
        A table saved before memories existed (4 meta fields) has none."""
        meta = [int(x) for x in np.asarray(d["meta"])]
        version, created_step, depth, n = meta[:4]
        n_mem, crc = meta[4:6] if len(meta) >= 6 else (0, 0)
        if n != len(corpus_ids):
            raise ValueError(f"negatives table was built for a corpus of {n} docs, this corpus has {len(corpus_ids)}")
        if n_mem != len(memory_ids) or crc != _ids_crc(memory_ids):
            raise ValueError(
                f"negatives table was built with {n_mem} memory documents (ids CRC32 {crc}), this run "
                f"has {len(memory_ids)} (CRC32 {_ids_crc(memory_ids)}): other negatives.memories"
            )
        sorted_qids = sorted(qrels)
        idx = np.asarray(d["qid_sorted_index"])
        if len(idx) != len(sorted_qids) or (len(idx) and (idx.min() < 0 or idx.max() >= len(sorted_qids))):
            raise ValueError(f"negatives table holds {len(idx)} queries, the training qrels {len(sorted_qids)}")
        qids = [sorted_qids[i] for i in idx]
        table = cls(
            qids,
            corpus_ids,
            d["pos_offsets"],
            d["pos_rows"],
            dict(d.get("candidates") or {}),
            {k: int(np.asarray(v)) for k, v in d["counts"].items()},
            depth,
            version,
            bytes(np.asarray(d["source"], dtype=np.uint8)).decode(),
            created_step,
            memory_ids=memory_ids,
        )
        for q in qids:
            stored = {table.corpus_ids[r] for r in table.positives(q).tolist()}
            if stored != {doc for doc, rel in qrels[q].items() if rel > 0}:
                raise ValueError(
                    f"negatives table positives of query {q!r} differ from the qrels: "
                    "it was built for other training data"
                )
        return table

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self.candidates.items()}
        return (
            f"NegativesTable(v{self.version}, source={self.source!r}, step={self.created_step}, "
            f"queries={len(self.qids)}, corpus={len(self.corpus_ids)}, memory_docs={len(self.memory_ids)}, "
            f"counts={dict(self.counts)}, "
            f"depth={self.depth}, candidates={shapes})"
        )

    def _row(self, qid: str) -> int:
        try:
            return self._qindex[qid]
        except KeyError:
            raise KeyError(f"query {qid!r} is not a training query of this negatives table") from None


def _ids_crc(ids: Sequence[str]) -> int:
    """CRC32 of the ids, one per line (0 for none): a cheap check that a checkpoint's rows mean the same docs."""
    crc = 0
    for i in range(0, len(ids), 65536):  # in chunks: no second copy of a million ids as one string
        crc = zlib.crc32("".join(f"{x}\n" for x in ids[i : i + 65536]).encode(), crc)
    return crc


def _default_source(counts: Mapping[str, int]) -> str:
    names = [k for k, v in counts.items() if v > 0]
    return names[0] if len(names) == 1 else "hybrid"
