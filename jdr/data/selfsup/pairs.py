"""Positive pairs from a raw corpus — no queries, no qrels: the common interface and the per-document generators.

A generator turns a `CorpusTokens` into training examples. Every example is a pure function of
(seed, epoch, position): the epoch's *plan* (which items, in which order — for cropping also where the chunk
grid starts) comes from `SeedSequence([seed, epoch], spawn_key=(tag,))`, and the random choices of the example
at `position` (0-based over the epoch's plan) from `np.random.default_rng([seed, epoch, position])` — the
convention of `jdr.data.groups.GroupIterator` — so an example depends neither on the batch size nor on the host
that draws it nor on how many were drawn before a restart. Resume state is just (epoch, position).

Views are content tokens until the end: augmentations (`augment.py`) apply to content, then the tokenizer's
special tokens are added and the view truncated to `query_max_length` / `passage_max_length`.

Examples are the training seam's `jdr.data.source.Example`s with one passage, the positive (`PairSource` adds
negatives). Keys (for in-batch false-negative masking): `passage_keys[0]` is the id of the document the positive
came from; `relevant` holds every document known to be relevant to the query (the positive's, and for BM25
pairs the query's own source document), so the batch builder masks any other in-batch passage carrying one of
them; `query_key` names the example's query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jdr.data.selfsup.augment import Augmentation, apply_augmentations
from jdr.data.selfsup.tokens import CorpusTokens
from jdr.data.source import Example


class PairGenerator:
    """Base class: subclasses define `_plan(rng) -> items [M, k] int64` (unshuffled) and
    `example(item, rng) -> Example`; the base shuffles the plan per epoch and draws examples by position.

    `query_augment` / `passage_augment`: augmentations applied to that view (see `augment.py`).
    """

    tag = 0  # spawn key of the epoch plan stream; distinct per generator

    def __init__(
        self,
        corpus: CorpusTokens,
        *,
        query_max_length: int = 64,
        passage_max_length: int = 256,
        query_augment: Sequence[Augmentation] = (),
        passage_augment: Sequence[Augmentation] = (),
    ):
        for name, n in (("query_max_length", query_max_length), ("passage_max_length", passage_max_length)):
            if corpus.special.budget(n) < 1:
                raise ValueError(f"{name}={n} leaves no room for content between the special tokens")
        self.corpus = corpus
        self.special = corpus.special
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.query_augment = tuple(query_augment)
        self.passage_augment = tuple(passage_augment)
        self._plans: dict[tuple[int, int], np.ndarray] = {}

    # -- the epoch plan ----------------------------------------------------------------------------------

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def example(self, item: np.ndarray, rng: np.random.Generator) -> Example:
        """The example of one plan row `item`, with its random choices drawn from `rng`."""
        raise NotImplementedError

    def epoch_plan(self, seed: int, epoch: int) -> np.ndarray:
        """`[M, k]` int64 item rows of `epoch`, in the order the epoch visits them (read-only; the last two
        epochs' plans are cached, so drawing a batch costs no re-planning)."""
        key = (int(seed), int(epoch))
        if key not in self._plans:
            self._plans[key] = self._make_plan(*key)
            while len(self._plans) > 2:
                self._plans.pop(next(iter(self._plans)))
        return self._plans[key]

    def _make_plan(self, seed: int, epoch: int) -> np.ndarray:
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(self.tag,)))
        items = self._plan(rng)
        if not len(items):
            raise ValueError(f"{type(self).__name__}: the corpus yields no training pairs")
        items = items[rng.permutation(len(items))]
        items.setflags(write=False)
        return items

    def epoch_size(self, seed: int, epoch: int) -> int:
        """Examples in `epoch` (the same for every epoch except for cropping, whose chunk grid moves)."""
        return len(self.epoch_plan(seed, epoch))

    def examples(self, seed: int, epoch: int, positions: Sequence[int]) -> list[Example]:
        """The examples at `positions` of `epoch` (a host's rows of a global batch: `range(start, stop)`)."""
        plan = self.epoch_plan(seed, epoch)
        out = []
        for p in positions:
            if not 0 <= p < len(plan):
                raise IndexError(f"position {p} is outside epoch {epoch} ({len(plan)} examples)")
            out.append(self.example(plan[p], np.random.default_rng([seed, epoch, int(p)])))
        return out

    # -- helpers -----------------------------------------------------------------------------------------

    def _views(self, query: np.ndarray, passage: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment each content view, then add special tokens and truncate to the view's max length."""
        query = apply_augmentations(query, self.query_augment, rng, self.special)
        passage = apply_augmentations(passage, self.passage_augment, rng, self.special)
        return (self.special.wrap(query, self.query_max_length), self.special.wrap(passage, self.passage_max_length))

    def _pair(self, query, passage, rng, query_key: str, doc: int, also_relevant: Sequence[str] = ()) -> Example:
        q, p = self._views(query, passage, rng)
        doc_id = self.corpus.ids[doc]
        return Example(q, (p,), query_key, (doc_id,), frozenset((doc_id, *also_relevant)))


def ragged_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + n)` for each `(s, n)` -> int64 `[sum(lengths)]`, without a Python loop."""
    starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def chunk_documents(lengths: np.ndarray, chunk_length: int, offsets: np.ndarray, min_chunk_length: int) -> np.ndarray:
    """Cut documents of `lengths[N]` tokens into chunks -> `[C, 3]` int64 rows `(doc, start, length)`.

    A document of at most `chunk_length` tokens is one chunk. A longer one is cut at `offsets[d] + j *
    chunk_length` (j >= 0, cut points strictly inside the document; `offsets[d]` in [0, chunk_length)), so the
    grid moves with the offset and the first and last pieces may be shorter. Pieces shorter than
    `min_chunk_length` are dropped.
    """
    lengths, offsets = np.asarray(lengths, np.int64), np.asarray(offsets, np.int64)
    long = lengths > chunk_length
    first_cut = np.where(offsets > 0, offsets, chunk_length)
    cuts = np.where(long, -(-(lengths - first_cut) // chunk_length), 0)  # cut points in (0, n)
    pieces = cuts + 1
    doc = np.repeat(np.arange(len(lengths)), pieces)
    j = ragged_ranges(np.zeros(len(lengths), np.int64), pieces)  # piece index within its document
    start = np.where(j == 0, 0, first_cut[doc] + (j - 1) * chunk_length)
    end = np.where(j < cuts[doc], first_cut[doc] + j * chunk_length, lengths[doc])
    rows = np.stack([doc, start, end - start], axis=1)
    return rows[rows[:, 2] >= max(1, min_chunk_length)]


class CropPairs(PairGenerator):
    """Independent cropping (Contriever): each document (title + body tokens) is cut into chunks of
    `chunk_length` tokens on a grid that moves every epoch (`chunk_documents`, one random offset per document
    and epoch); query and key are two independent contiguous spans of `uniform(ratio_min, ratio_max)` of the
    chunk's length (at least one token).

    Contriever concatenates all documents into one token stream before chunking, so a chunk — and the two
    crops — may straddle two unrelated documents; on a corpus of ~300-token abstracts (SciFact) that is most
    chunks, so here chunks never cross a document boundary. Keys: the document id.
    """

    tag = 1

    def __init__(
        self,
        corpus: CorpusTokens,
        *,
        chunk_length: int = 256,
        ratio_min: float = 0.05,
        ratio_max: float = 0.5,
        min_chunk_length: int = 16,
        **kwargs,
    ):
        super().__init__(corpus, **kwargs)
        if not 0.0 < ratio_min <= ratio_max <= 1.0:
            raise ValueError(f"crop ratios need 0 < ratio_min <= ratio_max <= 1, got {ratio_min}, {ratio_max}")
        if chunk_length < 2:
            raise ValueError(f"chunk_length must be >= 2, got {chunk_length}")
        self.chunk_length = chunk_length
        self.ratio_min, self.ratio_max = ratio_min, ratio_max
        self.min_chunk_length = min_chunk_length
        lengths = corpus.title_lengths + corpus.body_lengths
        self._lengths = lengths

    def _plan(self, rng):
        offsets = rng.integers(0, self.chunk_length, size=len(self._lengths))
        return chunk_documents(self._lengths, self.chunk_length, offsets, self.min_chunk_length)

    def crop_spans(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """`[2, 2]` int64 `(start, length)` of the query and the key crop inside a chunk of `length` tokens."""
        ratios = rng.uniform(self.ratio_min, self.ratio_max, size=2)
        sizes = np.maximum(1, (ratios * length).astype(np.int64))
        starts = rng.integers(0, length - sizes + 1)
        return np.stack([starts, sizes], axis=1)

    def example(self, item, rng):
        doc, start, length = (int(x) for x in item)
        chunk = self.corpus.passage(doc)[start : start + length]
        (qs, ql), (ks, kl) = self.crop_spans(length, rng)
        return self._pair(chunk[qs : qs + ql], chunk[ks : ks + kl], rng, f"{self.corpus.ids[doc]}@{start}", doc)


class DropoutPairs(PairGenerator):
    """Dropout-only views (SimCSE; Mirror-BERT / ESimCSE with `query_augment` / `passage_augment` such as
    `span:5` or `repeat:0.32`): the same text twice — the document (title + body) cut to the shorter of the two
    views' budgets — and the train step's two dropout masks (it draws separate keys for the query and the
    passage encode) make the pair. Keys: the document id."""

    tag = 2

    def _plan(self, rng):
        lengths = self.corpus.title_lengths + self.corpus.body_lengths
        return np.flatnonzero(lengths > 0)[:, None]

    def example(self, item, rng):
        doc = int(item[0])
        budget = min(self.special.budget(self.query_max_length), self.special.budget(self.passage_max_length))
        text = self.corpus.passage(doc)[:budget]
        return self._pair(text, text, rng, f"{self.corpus.ids[doc]}#same", doc)


class TitlePairs(PairGenerator):
    """Structural pseudo-queries (AugTriever's heuristic for structured documents): the title is the query and
    the body (without the title) the positive. Documents lacking either are skipped. Keys: the document id."""

    tag = 3

    def _plan(self, rng):
        ok = (self.corpus.title_lengths > 0) & (self.corpus.body_lengths > 0)
        return np.flatnonzero(ok)[:, None]

    def example(self, item, rng):
        doc = int(item[0])
        return self._pair(self.corpus.title(doc), self.corpus.text(doc), rng, f"{self.corpus.ids[doc]}#title", doc)
