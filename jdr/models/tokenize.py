"""Text -> padded int32 token arrays, the one bucketing rule that keeps XLA to a handful of shapes, and a model's
tokenizer files (`load_tokenizer`, `TOKENIZER_FILES`: what export and a workdir copy)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from jdr.errors import DataError
from jdr.io import as_path

# Buckets: 16, 32, 64, then multiples of 64 (so at most 6 shapes up to 256, 10 up to 512), capped at max_length.
_SMALL_BUCKETS = (16, 32, 64)
_STEP = 64
# Every file a model dir keeps its tokenizer in: WordPiece (vocab.txt), byte-level BPE (RoBERTa: vocab.json +
# merges.txt), sentencepiece (XLM-R), and the transformers configs. An export and a workdir's `encoder/` copy
# whichever of them the source has, so transformers can rebuild its slow tokenizer too.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)


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


def token_ids(tokenizer: Tokenizer, texts: Sequence[str], max_length: int, *, prefix: str = "") -> list[list[int]]:
    """Token ids of each text, `prefix` put before it (an E5-style "query: "), with special tokens, truncated to
    `max_length` (unpadded, ragged)."""
    texts = [prefix + t for t in texts] if prefix else list(texts)
    return [e.ids for e in _truncating(tokenizer, max_length).encode_batch(texts)]


def ragged(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> `(tokens[T] int32, offsets[N+1] int64)`: sequence i is `tokens[offsets[i]:offsets[i+1]]`."""
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    tokens = np.fromiter((t for s in seqs for t in s), np.int32, count=int(offsets[-1]))
    return tokens, offsets


def pad_ragged(
    tokens: np.ndarray,
    offsets: np.ndarray,
    rows: np.ndarray,
    length: int,
    pad_token_id: int = 0,
    n_rows: int | None = None,
) -> Tokenized:
    """Sequences `rows` of a ragged `(tokens, offsets)` right-padded (and cut) to `[n_rows or len(rows), length]`
    int32; extra rows are all padding (mask 0). Vectorised: one gather, no Python loop over rows."""
    rows = np.asarray(rows, np.int64)
    n_rows = len(rows) if n_rows is None else n_rows
    lengths = np.zeros(n_rows, np.int64)
    starts = np.zeros(n_rows, np.int64)
    lengths[: len(rows)] = np.minimum(offsets[rows + 1] - offsets[rows], length)
    starts[: len(rows)] = offsets[rows]
    cols = np.arange(length)
    mask = cols[None, :] < lengths[:, None]
    gather = np.where(mask, starts[:, None] + cols[None, :], 0)
    ids = np.where(mask, tokens[gather] if len(tokens) else 0, pad_token_id).astype(np.int32)
    return Tokenized(ids, mask.astype(np.int32))


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
    return pad_ragged(*ragged(ids), np.arange(len(ids)), length, pad_id(tokenizer))


def load_tokenizer(d) -> Tokenizer:
    """`tokenizer.json` of a model dir (local or gs://), with its own padding and truncation switched off (jdr sets
    both)."""
    path = as_path(d) / "tokenizer.json"
    if not path.exists():
        raise DataError(d, "no tokenizer.json (jdr needs a fast tokenizer file)")
    tok = Tokenizer.from_str(path.read_text())
    tok.no_padding()
    tok.no_truncation()
    return tok


def copy_tokenizer_files(src, dst) -> None:
    """Copy the `TOKENIZER_FILES` that model dir `src` has into `dst` (local or gs:// paths)."""
    src, dst = as_path(src), as_path(dst)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
