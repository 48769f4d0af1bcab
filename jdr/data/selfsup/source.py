"""A pair generator as a training source (`jdr.data.source.TrainingSource`): epochs of global batches of
consecutive plan positions, optional negatives per example, JSON state for exact resume.

Negatives. A pseudo-query has no id a negatives table could be keyed by, but its positive's document has: the
table (`jdr.negatives.documents.document_negatives`) is keyed by document id, so the negatives of an example are
drawn for its positive's document with `default_rng([seed, epoch, position, 1])`. Candidates relevant to the
example (its `relevant` keys) are dropped before drawing. (ANN refresh re-mines labelled queries; it does not
apply here.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jdr.data.selfsup.pairs import PairGenerator
from jdr.data.source import Example, TrainingSource, check_state


class PairSource(TrainingSource):
    """Global batches of `generator` examples: batch b of an epoch holds plan positions `[b*B, (b+1)*B)`; the
    epoch's last incomplete batch is dropped and the next epoch (a new plan) begins. Every host draws the whole
    global batch (the batch builder keeps its rows). `negatives`: a table keyed by document id
    (`jdr.negatives.documents.document_negatives`) with `num_negatives` per document, or None for in-batch
    negatives only."""

    def __init__(
        self,
        generator: PairGenerator,
        *,
        global_batch_size: int,
        seed: int,
        negatives=None,
        num_negatives: int = 0,
        name: str = "",
    ):
        if global_batch_size < 1 or seed < 0:
            raise ValueError(f"need global_batch_size >= 1 and seed >= 0, got {global_batch_size}, {seed}")
        if num_negatives and negatives is None:
            raise ValueError(f"num_negatives={num_negatives} needs a negatives table")
        self.generator = generator
        self.global_batch_size = global_batch_size
        self.group_size = 1 + num_negatives
        self.seed = seed
        self.table = negatives if num_negatives else None
        self.name = name or type(generator).__name__
        self._epoch, self._index = 0, 0
        if self._batches_in(0) == 0:
            raise ValueError(
                f"{self.name}: {generator.epoch_size(seed, 0)} examples per epoch cannot fill one "
                f"global batch of {global_batch_size}"
            )

    def _batches_in(self, epoch: int) -> int:
        return self.generator.epoch_size(self.seed, epoch) // self.global_batch_size

    def next_batch(self) -> list[Example]:
        while self._index >= self._batches_in(self._epoch):
            self._epoch, self._index = self._epoch + 1, 0
        start = self._index * self.global_batch_size
        positions = range(start, start + self.global_batch_size)
        out = self.generator.examples(self.seed, self._epoch, positions)
        if self.table is not None:
            out = [self._with_negatives(ex, p) for ex, p in zip(out, positions)]
        self._index += 1
        return out

    def _with_negatives(self, ex: Example, position: int) -> Example:
        corpus, special = self.generator.corpus, self.generator.special
        rng = np.random.default_rng([self.seed, self._epoch, position, 1])
        drawn = [d for d in self.table.sample(ex.passage_keys[0], rng) if d not in ex.relevant]
        while len(drawn) < self.group_size - 1:  # a drawn doc was relevant (BM25 pairs): top up uniformly
            d = corpus.ids[int(rng.integers(len(corpus)))]
            if d not in ex.relevant and d not in drawn:
                drawn.append(d)
        passages = tuple(
            special.wrap(corpus.passage(corpus.index[d]), self.generator.passage_max_length) for d in drawn
        )
        return ex._replace(passages=ex.passages + passages, passage_keys=ex.passage_keys + tuple(drawn))

    def state(self) -> dict[str, Any]:
        return {
            "kind": "selfsup",
            "generator": self.name,
            "seed": self.seed,
            "epoch": self._epoch,
            "index": self._index,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        check_state(state, {"kind": "selfsup", "generator": self.name, "seed": self.seed}, "training source")
        self._epoch, self._index = int(state["epoch"]), int(state["index"])

    def describe(self) -> dict[str, Any]:
        return {
            "generator": self.name,
            "documents": len(self.generator.corpus),
            "examples_per_epoch": self.generator.epoch_size(self.seed, 0),
            "group_size": self.group_size,
        }
