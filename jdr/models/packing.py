"""Sequence packing for inference: several texts in one row, so the row's positions carry tokens, not padding.

Each text keeps its own positions (restarting at 0) and attends only to its own tokens (a block-diagonal mask:
`BertModel(segment_ids=...)`), and is pooled over its own tokens only, so its embedding is the one it gets alone
in a padded row, up to float rounding. What packing changes is the cost: every packed row is `row_length`
tokens of which few are padding, while each of its texts attends over the whole row (the masked scores are
computed, then weigh exactly 0). `packing_cost` counts both sides for a length distribution.

    plan = plan_packing(lengths, row_length=256, max_segments=32)
    ids, segment_ids, position_ids = packed_rows(tokens, offsets, plan, rows, pad_token_id)
    emb = encode_packed(params, spec, ids, segment_ids, position_ids, tower="passage", max_segments=32)  # [B,S,D]
    # text i's embedding is emb[plan.row_of[i] - first_row, plan.slot_of[i]]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdr.models.encoder import EncoderSpec, head, tower_params

MAX_SEGMENTS = 32  # texts per packed row at most: the width of the pooled [B, S, H] output


class PackPlan(NamedTuple):
    """Where each of N texts goes: row `row_of[i]`, slot `slot_of[i]` (its segment id is slot + 1), starting at
    column `offset_of[i]`. Rows are numbered longest-first; `n_rows` rows of `row_length` tokens."""

    row_of: np.ndarray
    slot_of: np.ndarray
    offset_of: np.ndarray
    n_rows: int
    row_length: int
    max_segments: int


def plan_packing(lengths, row_length: int, max_segments: int = MAX_SEGMENTS) -> PackPlan:
    """Pack texts of `lengths` tokens into rows of `row_length`, at most `max_segments` texts a row.

    Greedy, O(N): texts sorted longest first; each row takes the longest text left, then fills its remaining
    room with the shortest texts left while they fit. On a long-tailed length distribution (most texts near the
    cut, a few short) this fills rows nearly full without a search.
    """
    lengths = np.asarray(lengths, np.int64)
    if row_length < 1 or max_segments < 1:
        raise ValueError(f"plan_packing: need row_length >= 1 and max_segments >= 1, got {row_length}, {max_segments}")
    if len(lengths) and lengths.max() > row_length:
        i = int(lengths.argmax())
        raise ValueError(f"text {i} has {int(lengths[i])} tokens, more than the packed row length {row_length}")
    n = len(lengths)
    row_of, slot_of, offset_of = (np.zeros(n, np.int64) for _ in range(3))
    order = np.argsort(-lengths, kind="stable")
    head_i, tail_i, row = 0, n - 1, 0
    while head_i <= tail_i:
        first = order[head_i]
        head_i += 1
        row_of[first], slot_of[first], offset_of[first] = row, 0, 0
        used, slot = int(lengths[first]), 1
        while head_i <= tail_i and slot < max_segments and used + lengths[order[tail_i]] <= row_length:
            j = order[tail_i]
            tail_i -= 1
            row_of[j], slot_of[j], offset_of[j] = row, slot, used
            used += int(lengths[j])
            slot += 1
        row += 1
    return PackPlan(row_of, slot_of, offset_of, row, row_length, max_segments)


def texts_by_row(plan: PackPlan) -> tuple[np.ndarray, np.ndarray]:
    """`(order, bounds)`: the texts of rows [a, b) are `order[bounds[a]:bounds[b]]` (one sort, so a batch of rows
    finds its texts without scanning all N)."""
    order = np.argsort(plan.row_of, kind="stable")
    return order, np.searchsorted(plan.row_of[order], np.arange(plan.n_rows + 1))


def packed_rows(
    tokens: np.ndarray,
    offsets: np.ndarray,
    plan: PackPlan,
    texts: np.ndarray,
    first_row: int,
    n_rows: int,
    pad_token_id: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int32 `(input_ids, segment_ids, position_ids)`, each `[n_rows, row_length]`, for rows
    `first_row, first_row + 1, ...` holding `texts` (text i is `tokens[offsets[i]:offsets[i+1]]`). Rows past the
    plan's end are all padding (segment 0). Vectorised: one scatter, no Python loop over texts."""
    texts = np.asarray(texts, np.int64)
    shape = (n_rows, plan.row_length)
    ids = np.full(shape, pad_token_id, np.int32)
    seg = np.zeros(shape, np.int32)
    pos = np.zeros(shape, np.int32)
    lens = (offsets[texts + 1] - offsets[texts]).astype(np.int64)
    within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    r = np.repeat(plan.row_of[texts] - first_row, lens)
    c = np.repeat(plan.offset_of[texts], lens) + within
    ids[r, c] = tokens[np.repeat(offsets[texts], lens) + within]
    seg[r, c] = np.repeat(plan.slot_of[texts] + 1, lens)
    pos[r, c] = within
    return ids, seg, pos


def pool_segments(hidden, segment_ids, position_ids, mode: str, max_segments: int):
    """Pool `hidden[B,L,H]` per text of each packed row -> `[B, max_segments, H]` float32 (slot s = segment
    s + 1; empty slots are 0). Same rules as `jdr.models.pooling.pool`: cls = the text's first token, mean over
    its tokens (1e-9 floor), max over its tokens."""
    hidden = hidden.astype(jnp.float32)
    slots = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
    member = (segment_ids[:, None, :] == slots[None, :, None]).astype(jnp.float32)  # [B,S,L]
    if mode == "cls":
        first = member * (position_ids[:, None, :] == 0)
        return jnp.einsum("bsl,blh->bsh", first, hidden, precision=jax.lax.Precision.HIGHEST)
    if mode == "mean":
        sums = jnp.einsum("bsl,blh->bsh", member, hidden, precision=jax.lax.Precision.HIGHEST)
        return sums / jnp.maximum(jnp.sum(member, axis=2), 1e-9)[..., None]
    if mode == "max":
        b, length, h = hidden.shape
        # segment_max over (row, slot) ids; padding goes to one extra id that is dropped.
        gid = jnp.where(segment_ids > 0, jnp.arange(b)[:, None] * max_segments + segment_ids - 1, b * max_segments)
        out = jax.ops.segment_max(hidden.reshape(b * length, h), gid.reshape(-1), b * max_segments + 1)
        out = out[: b * max_segments].reshape(b, max_segments, h)
        return jnp.where(jnp.sum(member, axis=2)[..., None] > 0, out, 0.0)
    raise ValueError(f"pooling: unknown mode {mode!r}")


def encode_packed(params, spec: EncoderSpec, input_ids, segment_ids, position_ids, *, tower: str, max_segments: int):
    """Embed the texts of packed rows -> float32 `[B, max_segments, D]` (slot s of row b: the text with
    segment id s + 1 there). Inference only (no dropout). Pure; jit with `spec`, `tower`, `max_segments` static."""
    hidden = spec.module().apply(
        {"params": tower_params(params, spec, tower)},
        input_ids,
        (segment_ids > 0).astype(jnp.int32),
        deterministic=True,
        position_ids=position_ids,
        segment_ids=segment_ids,
    )
    return head(params, spec, pool_segments(hidden, segment_ids, position_ids, spec.pooling, max_segments))


def transformer_flops(rows: int, length: int, hidden: int, intermediate: int, layers: int) -> float:
    """Forward FLOPs of `rows` rows of `length` tokens through a BERT encoder: the dense layers (QKV, output,
    FFN: 2 x (4 H^2 + 2 H I) per token) plus attention (scores and values: 2 x 2 x L x H per token)."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * length * hidden
    return float(rows) * length * per_token * layers


def packing_cost(
    lengths, max_length: int, batch_size: int, *, hidden: int = 384, intermediate: int = 1536, layers: int = 6
) -> dict:
    """Tokens and FLOPs that inference computes for texts of `lengths`: sorted + bucketed padding (what
    `encode_token_ids` does) against packing into rows of the longest text's bucket (`pack=True`); both pad the
    last batch to `batch_size` rows. Defaults: MiniLM-L6's shape."""
    from jdr.models.tokenize import bucket_length

    lengths = np.sort(np.asarray(lengths, np.int64))[::-1]
    real = int(lengths.sum())
    dims = dict(hidden=hidden, intermediate=intermediate, layers=layers)
    pad_tokens, pad_flops = 0, 0.0
    for start in range(0, len(lengths), batch_size):
        length = bucket_length(int(lengths[start]), max_length)
        pad_tokens += batch_size * length
        pad_flops += transformer_flops(batch_size, length, **dims)
    row_length = bucket_length(int(lengths[0]), max_length) if len(lengths) else 1
    plan = plan_packing(lengths, row_length, min(MAX_SEGMENTS, row_length))
    n_rows = -(-plan.n_rows // batch_size) * batch_size
    return {
        "texts": len(lengths),
        "real_tokens": real,
        "bucketed_tokens": pad_tokens,
        "packed_rows": plan.n_rows,
        "packed_tokens": n_rows * row_length,
        "bucketed_flops": pad_flops,
        "packed_flops": transformer_flops(n_rows, row_length, **dims),
        "real_flops_alone": float(sum(transformer_flops(1, int(n), **dims) for n in lengths)),
    }
