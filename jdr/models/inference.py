"""Batch inference: embed many texts with few XLA compilations."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jdr.models.encoder import EncoderSpec, embedding_dim, encode
from jdr.models.tokenize import bucket_length, pad, pad_id, token_ids


@functools.partial(jax.jit, static_argnames=("spec", "tower"))
def _encode_jit(params, spec: EncoderSpec, input_ids, attention_mask, tower: str):
    return encode(params, spec, input_ids, attention_mask, tower=tower)


def encode_texts(
    params,
    spec: EncoderSpec,
    tokenizer,
    texts: Sequence[str],
    *,
    tower: str = "passage",
    max_length: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Embed `texts` with `tower` -> float32 `[N, H]` in the input order.

    Texts are sorted by token length and each batch is padded to its `bucket_length`; the last batch is padded
    with empty rows to `batch_size`, so jit compiles once per bucket. `max_length` defaults to the tower's budget.
    """
    if isinstance(texts, str):
        raise ValueError("encode_texts: texts must be a sequence of strings, not one string")
    if batch_size < 1:
        raise ValueError(f"encode_texts: batch_size must be >= 1, got {batch_size}")
    max_length = max_length or spec.max_length(tower)
    ids = token_ids(tokenizer, texts, max_length)
    # Longest first: the biggest shapes (and any out-of-memory) come at the start, not after an hour.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = np.zeros((len(ids), embedding_dim(params, spec)), np.float32)
    pid = pad_id(tokenizer)
    # Tied towers are the same function: one compilation serves queries and passages.
    jit_tower = "query" if spec.tied else tower
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc=f"encode {tower}", unit="batch"):
        rows = order[start : start + batch_size]
        batch = [ids[i] for i in rows]
        tok = pad(batch, bucket_length(len(batch[0]), max_length), pid, rows=batch_size)
        emb = _encode_jit(params, spec, tok.input_ids, tok.attention_mask, jit_tower)
        out[rows] = np.asarray(emb)[: len(rows)]
    return out
