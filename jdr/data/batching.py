"""Training batches: pre-tokenised text stores, and the builder that turns a global batch of `Example`s into
this host's padded device-layout arrays plus the false-negative mask.

Tokenising on the fly costs more than a train step on an accelerator; pre-tokenised ragged ids (one flat int32
array + offsets) are cheap to slice. A batch pads to lengths decided from the GLOBAL batch (queries to the query
budget, passages to `bucket_length` of the longest passage, or to the budget), so every host and every device
sees the same shapes (pmap runs one program on all of them) and XLA compiles once or a handful of times.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from jdr.data.source import Example
from jdr.distributed import host_rows
from jdr.models.tokenize import bucket_length, pad_id, token_ids


@dataclasses.dataclass(frozen=True, eq=False)
class PretokenizedTexts:
    """Token ids of N texts, ragged: text i is `tokens[offsets[i]:offsets[i+1]]` (special tokens included,
    truncated to `max_length`). `ids[i]` is text i's id (query id or doc id). Build with `from_texts`."""

    ids: tuple[str, ...]
    tokens: np.ndarray  # [T] int32
    offsets: np.ndarray  # [N+1] int64
    max_length: int
    pad_id: int

    def __post_init__(self):
        if len(self.offsets) != len(self.ids) + 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.tokens):
            raise ValueError(
                f"offsets [{len(self.offsets)}] do not match {len(self.ids)} texts / {len(self.tokens)} tokens"
            )

    @classmethod
    def from_texts(
        cls,
        tokenizer,
        ids: Sequence[str],
        texts: Sequence[str],
        max_length: int,
        *,
        chunk: int = 8192,
        prefix: str = "",
    ) -> PretokenizedTexts:
        """Tokenise `prefix + text` for each of `texts` (a `tokenizers.Tokenizer`, truncation at `max_length`) in
        chunks of `chunk` texts.
        `texts` is any sequence supporting `len` and slices (e.g. `jdr.data.beir.PassageView`: the corpus is
        never joined into one list)."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        lengths = np.zeros(len(texts), dtype=np.int64)
        parts = []  # one flat array per chunk: a million small arrays would cost ~100 bytes of header each
        for start in range(0, len(texts), chunk):
            seqs = token_ids(tokenizer, texts[start : start + chunk], max_length, prefix=prefix)
            lengths[start : start + len(seqs)] = [len(s) for s in seqs]
            count = int(lengths[start : start + len(seqs)].sum())
            parts.append(np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=count))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return cls(tuple(ids), tokens, offsets, max_length, pad_id(tokenizer))

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def index(self) -> dict[str, int]:
        """id -> row."""
        return {k: i for i, k in enumerate(self.ids)}

    @cached_property
    def lengths(self) -> np.ndarray:
        """`[N]` int64 token count of each text."""
        return np.diff(self.offsets)

    def rows(self, keys: Sequence[str], what: str = "text") -> np.ndarray:
        """Rows `[len(keys)]` int64 of the ids `keys`; an unknown id is a ValueError naming it."""
        try:
            return np.fromiter((self.index[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as e:
            raise ValueError(f"{what} id {e.args[0]!r} was not pre-tokenised") from None

    def tokens_of(self, row: int) -> np.ndarray:
        """Text `row`'s token ids `[n]` int32 (a view into the store)."""
        return self.tokens[self.offsets[row] : self.offsets[row + 1]]

    def ragged(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The texts `rows` (in that order) as their own ragged pair `(tokens[T'] int32, offsets[len(rows)+1] int64)`,
        the input of `jdr.models.inference.encode_token_ids`; all rows in order share the store's arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and np.array_equal(rows, np.arange(len(self))):
            return self.tokens, self.offsets
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[rows] - offsets[:-1], lengths)
        return self.tokens[np.arange(offsets[-1]) + starts], offsets

    def padded(self, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """`(input_ids[len(rows), length], attention_mask[len(rows), length])` int32, right-padded with `pad_id`."""
        lengths = np.minimum(self.lengths[rows], length)
        cols = np.arange(length)
        mask = cols[None, :] < lengths[:, None]
        gather = np.where(mask, self.offsets[rows][:, None] + cols[None, :], 0)
        ids = np.where(mask, self.tokens[gather] if len(self.tokens) else 0, self.pad_id).astype(np.int32)
        return ids, mask.astype(np.int32)


def check_layout(global_batch_size: int, process_count: int, local_device_count: int) -> None:
    """Raise one ValueError line unless `global_batch_size` splits evenly over processes x local devices."""
    devices = process_count * local_device_count
    if global_batch_size < 1 or global_batch_size % devices:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by process_count {process_count} "
            f"x local devices {local_device_count} = {devices}"
        )


def pad_tokens(seqs: Sequence[np.ndarray], length: int, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int32 token arrays -> `(input_ids[n, length], attention_mask[n, length])` int32, right-padded."""
    ids = np.full((len(seqs), length), pad_token_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=np.int32)
    for r, seq in enumerate(seqs):
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
    return ids, mask


class BatchBuilder:
    """A global batch of `Example`s -> this host's int32 device-layout arrays for the pmapped train step.

    Output for the host's B examples of G passages over D local devices: `query_ids`, `query_mask`: `[D, B/D,
    Lq]`; `passage_ids`, `passage_mask`: `[D, B/D * G, Lp]`, where on each device passage row `i*G` is the
    positive of that device's query i and rows `i*G+1 .. i*G+G-1` its negatives (the layout `jdr.losses` expects);
    with examples that carry teacher `scores`, also `teacher_scores`: float32 `[D, B/D, G]`;
    with `false_negatives`, also `false_negatives`: bool `[D, B/D, C]` — True where the column's passage key is
    labelled relevant to the query (`Example.relevant`), C being the global batch's B_global*G passages in
    all-gather order (`cross_device=True`) or the device's own B/D*G passages. The host's rows are its contiguous
    slice of the global batch (`jdr.distributed.host_rows`). Lq is the query budget (`pad_queries_to_max`) or
    `bucket_length` of the longest query in the GLOBAL batch; Lp likewise for passages. Deterministic: a function
    of the batch only.
    """

    def __init__(
        self,
        *,
        query_max_length: int,
        passage_max_length: int,
        pad_token_id: int,
        local_device_count: int,
        process_index: int = 0,
        process_count: int = 1,
        pad_queries_to_max: bool = True,
        pad_passages_to_max: bool = False,
        false_negatives: bool = True,
        cross_device: bool = True,
    ):
        if local_device_count < 1:
            raise ValueError(f"local_device_count must be >= 1, got {local_device_count}")
        self.query_max_length, self.passage_max_length = query_max_length, passage_max_length
        self.pad_token_id = pad_token_id
        self.local_device_count = local_device_count
        self.process_index, self.process_count = process_index, process_count
        self.pad_queries_to_max, self.pad_passages_to_max = pad_queries_to_max, pad_passages_to_max
        self.false_negatives, self.cross_device = false_negatives, cross_device

    def __call__(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
        """Arrays for this host's rows of the global batch `examples`."""
        world = len(examples)
        check_layout(world, self.process_count, self.local_device_count)
        group = len(examples[0].passages)
        if any(len(ex.passages) != group or len(ex.passage_keys) != group for ex in examples):
            raise ValueError("examples in one batch carry different numbers of passages (or keys)")
        q_len = self._length([ex.query for ex in examples], self.query_max_length, self.pad_queries_to_max, "query")
        p_len = self._length(
            [p for ex in examples for p in ex.passages], self.passage_max_length, self.pad_passages_to_max, "passage"
        )
        rows = host_rows(world, self.process_index, self.process_count)
        host = examples[rows]
        b, d = len(host), self.local_device_count
        q_ids, q_mask = pad_tokens([ex.query for ex in host], q_len, self.pad_token_id)
        p_ids, p_mask = pad_tokens([p for ex in host for p in ex.passages], p_len, self.pad_token_id)
        out = {
            "query_ids": q_ids.reshape(d, b // d, q_len),
            "query_mask": q_mask.reshape(d, b // d, q_len),
            "passage_ids": p_ids.reshape(d, b // d * group, p_len),
            "passage_mask": p_mask.reshape(d, b // d * group, p_len),
        }
        if self.false_negatives:
            mask = relevance_mask(examples, rows.start, b)
            if not self.cross_device:  # each device scores only its own passages: keep its block of columns
                per = b // d
                start = rows.start * group
                mask = np.stack(
                    [
                        mask[i * per : (i + 1) * per, start + i * per * group : start + (i + 1) * per * group]
                        for i in range(d)
                    ]
                )
            out["false_negatives"] = mask.reshape(d, b // d, -1)
        if examples[0].scores is not None:  # teacher scores of each group (distillation), float32 [D, B/D, G]
            if any(ex.scores is None or len(ex.scores) != group for ex in examples):
                raise ValueError("examples in one batch carry teacher scores for some groups only")
            out["teacher_scores"] = np.asarray([ex.scores for ex in host], np.float32).reshape(d, b // d, group)
        return out

    @staticmethod
    def _length(seqs: Sequence[np.ndarray], budget: int, fixed: bool, what: str) -> int:
        longest = max(len(s) for s in seqs)
        if longest > budget:
            raise ValueError(
                f"a {what} of {longest} tokens exceeds the {what} budget of {budget}: the training source must truncate"
            )
        return budget if fixed else bucket_length(longest, budget)


def relevance_mask(examples: Sequence[Example], first: int, count: int) -> np.ndarray:
    """bool `[count, B*G]`: for global examples `first .. first+count-1`, which columns of the global batch (example
    e's passage k is column e*G + k) carry a passage key labelled relevant to the example's query. The own
    positive is among them (the loss never drops it)."""
    group = len(examples[0].passages)
    columns: dict[str, list[int]] = {}
    for e, ex in enumerate(examples):
        for k, key in enumerate(ex.passage_keys):
            columns.setdefault(key, []).append(e * group + k)
    mask = np.zeros((count, len(examples) * group), dtype=bool)
    for r in range(count):
        for key in examples[first + r].relevant:
            mask[r, columns.get(key, ())] = True
    return mask
