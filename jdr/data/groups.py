"""`GroupIterator`: the deterministic stream of training groups (query, one positive, n negatives).

Epoch unit: the (query, positive) PAIR. Every epoch is a seeded permutation of all pairs (relevance > 0), so a
query with k positives is seen k times per epoch, each time with a different positive. (Tevatron instead visits
each query once per epoch with one positive chosen per epoch; on MS MARCO / BEIR training sets nearly every query
has one positive, so the two agree there.) The last incomplete global batch of an epoch is dropped.

With `unique_in_batch=True` (default) a global batch never holds the same query twice nor the same positive
doc twice: with in-batch negatives either would make a positive count as a negative of its own query (a false
negative). A pair that clashes with the batch being filled waits (in order) for the next batch; pairs still
waiting at the end of the epoch are dropped with the incomplete batch. The arrangement depends only on
(seed, epoch).

Determinism: negatives of the row at position `p` (0-based, counted over the epoch's arranged pairs) of epoch
`e` are drawn with `np.random.default_rng([seed, e, p])`, so they depend neither on the host that draws them nor
on how many batches were consumed before a restart. The iterator yields the whole global batch (cheap: n ids per
row); the batch builder keeps each host's rows (`jdr.data.batching.BatchBuilder`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

_PERMUTATION_KEY = (0x6A647247,)  # spawn key: keeps the permutation stream apart from the per-row streams


class NegativesSampler(Protocol):
    """What `GroupIterator` needs of a negatives table (`jdr.negatives.table.NegativesTable` is one)."""

    version: int

    def sample(self, qid: str, rng: np.random.Generator) -> list[str]: ...


class Group(NamedTuple):
    """One training row: a query, one of its positives, and `num_negatives` negative doc ids."""

    query_id: str
    positive_id: str
    negative_ids: tuple[str, ...]


class GroupBatch(NamedTuple):
    """What `GroupIterator` yields per global batch: the `groups` of the whole global batch (identical on every
    host) and the batch's position (`epoch`, `index`)."""

    groups: list[Group]
    epoch: int
    index: int


class GroupIterator:
    """Endless, deterministic iterator of `GroupBatch`es over the (query, positive) pairs of `train_qids`.

    `qrels`: qid -> {docid: relevance}; positives are relevance > 0. Queries without a positive are skipped
    (`self.skipped_queries` counts them). `negatives_sampler`: a `NegativesSampler` returning exactly
    `num_negatives` doc ids (may be None when `num_negatives == 0`: in-batch negatives only). Pairs are ordered
    by `train_qids` (first occurrence) then by doc id before the seeded permutation, so the stream does not
    depend on dict order.
    """

    def __init__(
        self,
        train_qids: Sequence[str],
        qrels: Mapping[str, Mapping[str, int]],
        negatives_sampler: NegativesSampler | None,
        *,
        global_batch_size: int,
        num_negatives: int,
        seed: int,
        unique_in_batch: bool = True,
    ):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        if num_negatives and negatives_sampler is None:
            raise ValueError(f"num_negatives={num_negatives} needs a negatives table")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        pairs, skipped = [], 0
        for qid in dict.fromkeys(train_qids):
            positives = sorted(d for d, rel in qrels.get(qid, {}).items() if rel > 0)
            skipped += not positives
            pairs.extend((qid, d) for d in positives)
        if len(pairs) < global_batch_size:
            raise ValueError(
                f"{len(pairs)} (query, positive) pairs cannot fill one global batch of {global_batch_size}"
            )
        self.pairs: list[tuple[str, str]] = pairs
        self.skipped_queries = skipped
        self.global_batch_size = global_batch_size
        self.num_negatives = num_negatives
        self.seed = seed
        self.unique_in_batch = unique_in_batch
        self._table = negatives_sampler
        self._epoch = 0
        self._index = 0
        self._order: tuple[int, list[int]] | None = None  # (epoch, arranged pair indices) cache
        if self.steps_per_epoch(0) == 0:
            raise ValueError(
                f"no global batch of {global_batch_size} without a repeated query or positive doc; "
                "lower the batch size or set unique_in_batch=False"
            )

    # -- position ------------------------------------------------------------------------------------------

    @property
    def table(self) -> NegativesSampler | None:
        """The negatives table the next batches draw from."""
        return self._table

    @property
    def table_version(self) -> int | None:
        """`version` of the current table (None without one)."""
        return None if self._table is None else int(self._table.version)

    def set_table(self, table: NegativesSampler) -> None:
        """Swap the negatives table (ANCE refresh): batches drawn after this call sample from `table`."""
        if table is None and self.num_negatives:
            raise ValueError(f"num_negatives={self.num_negatives} needs a negatives table")
        self._table = table

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """Global batches in `epoch` (default: the current one); constant unless `unique_in_batch` drops pairs."""
        return len(self._arranged(self._epoch if epoch is None else epoch)) // self.global_batch_size

    def state(self) -> dict[str, Any]:
        """JSON-able position: the next batch is batch `index` of epoch `epoch`. Saved with each checkpoint."""
        return {
            "epoch": self._epoch,
            "index": self._index,
            "table_version": self.table_version,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_pairs": len(self.pairs),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from `state()` of an iterator over the same data and settings.

        Restore the checkpoint's negatives table (`set_table`) first: a table version that differs from the
        saved one is a ValueError, as is a different seed, global batch size or number of pairs.
        """
        for key in ("seed", "global_batch_size", "num_pairs", "table_version"):
            mine = len(self.pairs) if key == "num_pairs" else getattr(self, key)
            if key not in state:
                raise ValueError(f"iterator state has no {key!r}")
            if state[key] != mine:
                raise ValueError(f"iterator state was saved with {key}={state[key]}, this iterator has {mine}")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.steps_per_epoch(epoch):
            raise ValueError(f"iterator state epoch={epoch} index={index} is out of range")
        self._epoch, self._index = epoch, index

    # -- iteration ---------------------------------------------------------------------------------------

    def __iter__(self) -> GroupIterator:
        return self

    def __next__(self) -> GroupBatch:
        """The next global batch; advances the position."""
        if self._index >= self.steps_per_epoch():
            self._epoch, self._index = self._epoch + 1, 0
            if not self.steps_per_epoch():
                raise ValueError(f"epoch {self._epoch} has no global batch without a repeated query or positive doc")
        epoch, index = self._epoch, self._index
        order = self._arranged(epoch)
        start = index * self.global_batch_size
        global_groups = [self._group(epoch, start + r, order[start + r]) for r in range(self.global_batch_size)]
        self._index += 1
        return GroupBatch(global_groups, epoch, index)

    def _group(self, epoch: int, position: int, pair: int) -> Group:
        qid, pos = self.pairs[pair]
        if not self.num_negatives:
            return Group(qid, pos, ())
        negatives = tuple(self._table.sample(qid, np.random.default_rng([self.seed, epoch, position])))
        if len(negatives) != self.num_negatives:
            raise ValueError(
                f"negatives table v{self.table_version} gave {len(negatives)} negatives for query "
                f"{qid!r}, expected num_negatives={self.num_negatives}"
            )
        return Group(qid, pos, negatives)

    def _arranged(self, epoch: int) -> list[int]:
        """Pair indices of `epoch` in batch order (full batches first; a tail shorter than a batch is unused)."""
        if self._order is not None and self._order[0] == epoch:
            return self._order[1]
        seq = np.random.SeedSequence([self.seed, epoch], spawn_key=_PERMUTATION_KEY)
        perm = np.random.default_rng(seq).permutation(len(self.pairs)).tolist()
        order = _unique_batches(perm, self.pairs, self.global_batch_size) if self.unique_in_batch else perm
        self._order = (epoch, order)
        return order


def _unique_batches(perm: list[int], pairs: list[tuple[str, str]], batch: int) -> list[int]:
    """Re-order `perm` greedily into batches without a repeated query or positive doc; returns full batches only.

    A clashing pair waits in a FIFO queue and is placed in the first later batch it fits; waiting pairs are
    tried before new ones so nothing waits long. Deterministic given `perm`.
    """
    out: list[int] = []
    waiting: deque[int] = deque()
    stream = iter(perm)
    exhausted = False
    while True:
        qids, docs, current = set(), set(), []

        def fits(i: int) -> bool:
            q, d = pairs[i]
            return q not in qids and d not in docs

        def add(i: int) -> None:
            current.append(i)
            qids.add(pairs[i][0])
            docs.add(pairs[i][1])

        for _ in range(len(waiting)):
            i = waiting.popleft()
            if len(current) < batch and fits(i):
                add(i)
            else:
                waiting.append(i)
        while len(current) < batch and not exhausted:
            i = next(stream, None)
            if i is None:
                exhausted = True
            elif fits(i):
                add(i)
            else:
                waiting.append(i)
        if len(current) < batch:
            return out
        out.extend(current)
