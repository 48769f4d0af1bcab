"""Training batches from groups: tokenise every query and passage once, then gather, pad and lay out per device.

Tokenising on the fly costs more than a train step on an accelerator; pre-tokenised ragged ids (one flat int32
array + offsets) are cheap to index. A batch pads to `bucket_length` of the longest text in the GLOBAL batch,
so every host and every device sees the same shapes (pmap runs one program on all of them) and XLA compiles a
handful of shapes only.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Sequence

import numpy as np

from jdr.data.groups import GroupBatch
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
            raise ValueError(f"offsets [{len(self.offsets)}] do not match {len(self.ids)} texts / "
                             f"{len(self.tokens)} tokens")

    @classmethod
    def from_texts(cls, tokenizer, ids: Sequence[str], texts: Sequence[str], max_length: int, *,
                   chunk: int = 8192) -> "PretokenizedTexts":
        """Tokenise `texts` (a `tokenizers.Tokenizer`, truncation at `max_length`) in chunks of `chunk` texts."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        lengths = np.zeros(len(texts), dtype=np.int64)
        parts = []
        for start in range(0, len(texts), chunk):
            seqs = token_ids(tokenizer, texts[start:start + chunk], max_length)
            lengths[start:start + len(seqs)] = [len(s) for s in seqs]
            parts.extend(np.asarray(s, dtype=np.int32) for s in seqs)
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
        raise ValueError(f"global batch size {global_batch_size} is not divisible by process_count {process_count} "
                         f"x local devices {local_device_count} = {devices}")


class BatchBuilder:
    """`GroupBatch` -> dict of int32 device-layout arrays for the pmapped train step.

    Output for a host shard of B groups of G = 1 + n passages over D local devices:
    `query_ids`, `query_mask`: `[D, B/D, Lq]`; `passage_ids`, `passage_mask`: `[D, B/D * G, Lp]`, where on each
    device passage row `i*G` is the positive of that device's query i and rows `i*G+1 .. i*G+n` its negatives
    (the layout `jdr.losses.info_nce` expects). Lq / Lp are `bucket_length` of the longest query / passage in
    the global batch. Deterministic: a function of the batch only.
    """

    def __init__(self, queries: PretokenizedTexts, passages: PretokenizedTexts, *, local_device_count: int):
        if local_device_count < 1:
            raise ValueError(f"local_device_count must be >= 1, got {local_device_count}")
        self.queries = queries
        self.passages = passages
        self.local_device_count = local_device_count

    def __call__(self, batch: GroupBatch) -> dict[str, np.ndarray]:
        """Arrays for `batch.groups` (this host's shard), padded to the global batch's bucket lengths."""
        host, world = len(batch.groups), len(batch.global_groups)
        if not host or world % host:
            raise ValueError(f"host shard of {host} groups does not divide the global batch of {world}")
        check_layout(world, world // host, self.local_device_count)
        groups = len(batch.groups[0].negative_ids) + 1
        if any(len(g.negative_ids) + 1 != groups for g in batch.global_groups):
            raise ValueError("groups in one batch carry different numbers of negatives")

        def passage_keys(gs):
            return [d for g in gs for d in (g.positive_id, *g.negative_ids)]

        q_len = self._bucket(self.queries, [g.query_id for g in batch.global_groups], "query")
        p_len = self._bucket(self.passages, passage_keys(batch.global_groups), "doc")
        q_ids, q_mask = self.queries.padded(self.queries.rows([g.query_id for g in batch.groups], "query"), q_len)
        p_ids, p_mask = self.passages.padded(self.passages.rows(passage_keys(batch.groups), "doc"), p_len)
        d = self.local_device_count
        return {
            "query_ids": q_ids.reshape(d, host // d, q_len),
            "query_mask": q_mask.reshape(d, host // d, q_len),
            "passage_ids": p_ids.reshape(d, host // d * groups, p_len),
            "passage_mask": p_mask.reshape(d, host // d * groups, p_len),
        }

    @staticmethod
    def _bucket(texts: PretokenizedTexts, keys: list[str], what: str) -> int:
        longest = int(texts.lengths[texts.rows(keys, what)].max())
        return bucket_length(longest, texts.max_length)
