"""Text -> padded int32 token arrays, and the one bucketing rule that keeps XLA to a handful of shapes."""

from __future__ import annotations

import threading
from typing import NamedTuple, Sequence

import numpy as np
from tokenizers import Tokenizer

# Buckets: 16, 32, 64, then multiples of 64 (so at most 6 shapes up to 256, 10 up to 512), capped at max_length.
_SMALL_BUCKETS = (16, 32, 64)
_STEP = 64


class Tokenized(NamedTuple):
    """`input_ids[N,L]` and `attention_mask[N,L]`, both int32 numpy."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


def bucket_length(n: int, max_length: int) -> int:
    """The padded length for a longest sequence of `n` tokens: the smallest bucket >= n, capped at `max_length`."""
    if n < 0 or max_length < 1:
        raise ValueError(f"bucket_length: need n >= 0 and max_length >= 1, got n={n}, max_length={max_length}")
    for b in _SMALL_BUCKETS:
        if n <= b:
            return min(b, max_length)
    return min(-(-n // _STEP) * _STEP, max_length)


_cache: dict[tuple[int, int], tuple[Tokenizer, Tokenizer]] = {}
_cache_lock = threading.Lock()


def _truncating(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """A copy of `tokenizer` that truncates at `max_length` and does not pad.

    A copy, not `enable_truncation` on the caller's object: a checkpoint's own tokenizer.json may truncate
    elsewhere (all-MiniLM-L6-v2 says 128, the model uses 256), and the query and passage towers (or a background
    negatives refresh) tokenise concurrently with different budgets.
    """
    key = (id(tokenizer), max_length)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is None or hit[0] is not tokenizer:
            clone = Tokenizer.from_str(tokenizer.to_str())
            clone.no_padding()
            clone.enable_truncation(max_length=max_length)
            # Keeping `tokenizer` referenced pins its id, so the key cannot be reused by another object.
            hit = _cache[key] = (tokenizer, clone)
    return hit[1]


def pad_id(tokenizer: Tokenizer) -> int:
    """The padding token id ([PAD] or <pad>; 0 if the vocab has neither). Its value never reaches an output."""
    for tok in ("[PAD]", "<pad>"):
        i = tokenizer.token_to_id(tok)
        if i is not None:
            return i
    return 0


def token_ids(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, with special tokens, truncated to `max_length` (unpadded, ragged)."""
    return [e.ids for e in _truncating(tokenizer, max_length).encode_batch(list(texts))]


def pad(ids: Sequence[Sequence[int]], length: int, pad_token_id: int = 0, rows: int | None = None) -> Tokenized:
    """Right-pad ragged id lists to `[rows or len(ids), length]`; extra rows are all padding (mask 0)."""
    rows = len(ids) if rows is None else rows
    input_ids = np.full((rows, length), pad_token_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for r, seq in enumerate(ids):
        input_ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
    return Tokenized(input_ids, mask)


def tokenize(tokenizer: Tokenizer, texts: Sequence[str], max_length: int, *, length: int | None = None) -> Tokenized:
    """Tokenise `texts` (truncated to `max_length`) into int32 `[N, L]` arrays.

    L is `length` if given (a fixed shape, e.g. for training), else `bucket_length(longest, max_length)`.
    """
    if isinstance(texts, str):
        raise ValueError("tokenize: texts must be a sequence of strings, not one string")
    ids = token_ids(tokenizer, texts, max_length)
    longest = max((len(s) for s in ids), default=1)
    if length is None:
        length = bucket_length(longest, max_length)
    elif length < min(longest, max_length):
        raise ValueError(f"tokenize: length={length} is shorter than the longest sequence ({longest} tokens)")
    return pad(ids, length, pad_id(tokenizer))
