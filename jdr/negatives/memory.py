"""The `memory` negatives source: hard negatives mined from a mixture of memories, as MoMA draws them (Ge et al.,
2023, "Augmenting Zero-Shot Dense Retrievers with Plug-in Mixture-of-Memories": hard negatives "from the memory
mixture").

The mixture is the training corpus — memory `train`, embedded by the model being trained — plus fixed augmentation
memories: other corpora encoded once (`jdr encode`, optionally `jdr index`) and searched as they are
(`jdr.index.memories`). Each training query, embedded with the current query tower, gets the merged top-`depth`
over the mixture (`mix=None`) or a quota per memory (`{"train": 100, "wiki": 50}`), its positives excluded.

Rows: the training corpus keeps rows [0, N) and its plain ids; augmentation memory j's row r is table row
N + (rows of memories before j) + r, id `"name:docid"` (`MemoryNegatives.ids`, the table's `memory_ids`). An ANCE
refresh (`jdr.negatives.refresh.ann_build_fn`) re-mines with the re-encoded training corpus and the current query
tower; the augmentation memories are NOT re-encoded (their vectors come from the model that encoded them: re-encoding
a large memory at every refresh is what their fixed index avoids; the model drifts away from them as it trains).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jdr.index.memories import SEP, Memories, Memory

TRAIN = "train"  # the training corpus's memory in a mix
MERGED = "merged"


def parse_mix(spec: str) -> dict[str, int] | None:
    """`"merged"` -> None (one ranking over the union); `"train:100,wiki:50"` -> per-memory candidate quotas."""
    if spec.strip() == MERGED:
        return None
    quotas: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, num = part.rpartition(":")
        if not sep or not name.strip() or not num.strip().isdigit() or name.strip() in quotas:
            raise ValueError(
                f"negatives.memory_mix: bad entry {part!r} in {spec!r}; expected '{MERGED}' or "
                "'memory:count,...' with each memory once"
            )
        quotas[name.strip()] = int(num)
    if not quotas or not sum(quotas.values()):
        raise ValueError(f"negatives.memory_mix {spec!r} gives no memory a quota")
    return quotas


class MemoryNegatives:
    """Mines the `memory` candidates of a negatives table (see the module docstring).

    `corpus_ids`: the training corpus in row order; `augment`: the fixed augmentation memories (names unique, not
    `train`, none of their `"name:docid"` ids a corpus id); `mix`: `parse_mix` output, names among `train` and the
    augmentation memories; `factory`: faiss index over the training corpus embeddings (built at every mine).
    """

    def __init__(
        self,
        corpus_ids: Sequence[str],
        augment: Sequence[Memory],
        *,
        mix: Mapping[str, int] | None = None,
        factory: str = "Flat",
        corpus_index: Mapping[str, int] | None = None,
    ):
        names = [m.name for m in augment]
        if not augment:
            raise ValueError(
                "the memory source needs at least one augmentation memory (for the training corpus "
                "alone, mine `ann` negatives)"
            )
        if TRAIN in names:
            raise ValueError(f"memory name {TRAIN!r} is the training corpus; name the augmentation memory otherwise")
        fixed = Memories(augment)  # unique names, one width and metric
        if fixed.metric != "ip":
            raise ValueError(
                f"memory {augment[0].name} ranks by {fixed.metric}; the model scores by inner product "
                "(build its index with the ip metric)"
            )
        unknown = sorted(set(mix or ()) - {TRAIN, *names})
        if unknown:
            raise ValueError(f"unknown memory {unknown[0]!r}; memories are {', '.join([TRAIN, *names])}")
        self.corpus_ids = list(corpus_ids)
        self.augment, self.d = list(augment), fixed.d
        self.mix, self.factory = (None if mix is None else dict(mix)), factory
        self.offsets = np.cumsum([len(self.corpus_ids)] + [m.index.ntotal for m in self.augment])
        self.ids = [f"{m.name}{SEP}{d}" for m in self.augment for d in m.doc_ids]
        index = corpus_index if corpus_index is not None else dict.fromkeys(self.corpus_ids)
        clash = next((i for i in self.ids if i in index), None)
        if clash is not None:
            raise ValueError(f"memory document {clash!r} has the id of a training corpus document: keys must differ")

    def width(self, depth: int) -> int:
        """Candidates per query: `depth` merged, or the quotas' sum."""
        return depth if self.mix is None else sum(self.mix.values())

    def mine(
        self,
        query_emb: np.ndarray,
        passage_emb: np.ndarray,
        depth: int,
        pos_offsets: np.ndarray,
        pos_rows: np.ndarray,
        *,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of `query_emb[Q, d]` over the training corpus embedded as `passage_emb[N, d]` (corpus row
        order) and the augmentation memories -> `(scores[Q, K] float32, rows[Q, K] int64)` in table rows, best
        first, -1 padded; `K = width(depth)`. Each query's positives (CSR `pos_offsets[Q+1]`, `pos_rows`: corpus
        rows) are never returned."""
        passage_emb = np.asarray(passage_emb, dtype=np.float32)
        if passage_emb.shape != (len(self.corpus_ids), self.d) or not np.isfinite(passage_emb).all():
            raise ValueError(
                f"memory negatives: training corpus embeddings of shape {passage_emb.shape} (finite "
                f"[{len(self.corpus_ids)}, {self.d}] expected)"
            )
        # the training corpus's memory is rebuilt from the current embeddings; the augmentation memories are shared
        train = Memory.from_arrays(TRAIN, passage_emb, self.corpus_ids, self.factory, seed=seed)
        hits = Memories([train, *self.augment]).mine(
            query_emb, depth=depth, mix=self.mix, exclude={TRAIN: (pos_offsets, pos_rows)}
        )
        found = hits.rows >= 0
        base = np.concatenate([[0], self.offsets[:-1]])  # table row of each memory's row 0
        rows = np.where(found, base[np.maximum(hits.memory, 0)] + hits.rows, -1)
        return np.where(found, hits.scores, np.nan).astype(np.float32), rows.astype(np.int64)
