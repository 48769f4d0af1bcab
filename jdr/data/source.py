"""The training-source seam: what the trainer consumes, whatever the data looks like.

A *training source* yields, batch after batch, the whole GLOBAL batch as a list of `Example`s — token arrays
for a query, its positive passage and its negatives, with string keys that name them — deterministically from
(seed, epoch, position), and saves its position as a small JSON-able `state()` that goes into every checkpoint.
Every host draws the same global batch (cheap: token arrays are views into pre-tokenised stores) and the batch
builder (`jdr.data.batching.BatchBuilder`) keeps the host's rows, pads them to lengths taken from the global
batch (so all hosts run the same program) and builds the false-negative mask from the keys.

Implementations: `jdr.data.labeled.LabeledSource` (queries + corpus + relevance labels + a negatives table: BEIR,
Tevatron JSONL, triplets, MS MARCO all reduce to it), `jdr.data.mixture.MixtureSource` (several sources with
weights). The train step never sees a source: it sees token arrays.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np


class Example(NamedTuple):
    """One training group as tokens.

    `query`: `[Lq]` int32 token ids, special tokens included, already truncated to the query budget.
    `passages`: `(positive, *negatives)`, each `[Lp_i]` int32 (truncated to the passage budget).
    `query_key`: names the query; `passage_keys[i]` names `passages[i]` (a doc id, namespaced by the source in a
    mixture). `relevant`: the passage keys the labels call relevant to this query (its positives, the own
    positive included); any other column of the batch carrying one of these keys is masked out of this query's
    softmax (a false negative), see `jdr.losses.info_nce`. `scores`: a teacher's score of each passage (the
    `jsonl` source's `score` fields, for distillation), or None.
    """

    query: np.ndarray
    passages: tuple[np.ndarray, ...]
    query_key: str
    passage_keys: tuple[str, ...]
    relevant: frozenset[str]
    scores: tuple[float, ...] | None = None


class TrainingSource(abc.ABC):
    """A deterministic, resumable stream of global training batches (see the module docstring).

    `global_batch_size`: examples per batch; `group_size`: passages per example (1 + negatives), the same for
    every example of every batch. `next_batch()` returns the next global batch and advances; `state()` is the
    JSON-able position after the batches drawn so far and `restore(state)` continues from it (bit-identical
    batches), on any process count.
    """

    global_batch_size: int
    group_size: int

    @abc.abstractmethod
    def next_batch(self) -> list[Example]:
        """The next global batch: `global_batch_size` examples of `group_size` passages each."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-able position (saved with each checkpoint)."""

    @abc.abstractmethod
    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state()` of a source over the same data and settings; a mismatch is a ValueError."""

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the data (sizes, skipped rows) for the run record."""
        return {}


def check_state(state: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
    """Raise one ValueError line unless every key of `expected` is in `state` with the same value."""
    for key, mine in expected.items():
        if key not in state:
            raise ValueError(f"{what} state has no {key!r}")
        if state[key] != mine:
            raise ValueError(f"{what} state was saved with {key}={state[key]!r}, this run has {mine!r}")
