"""Batch inference: embed many texts (or already-tokenised ids) over all local devices with few XLA compilations."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jdr.models.cpu_options import inference_compiler_options
from jdr.models.encoder import EncoderSpec, embedding_dim, encode
from jdr.models.packing import MAX_SEGMENTS, encode_packed, packed_rows, plan_packing, texts_by_row
from jdr.models.tokenize import bucket_length, pad_id, pad_ragged, ragged, token_ids


@functools.cache
def _compiled(devices: tuple, spec: EncoderSpec, tower: str):
    """`(encode_fn, params_sharding, rows_sharding)` for a 1-D "batch" mesh over `devices`: params replicated,
    rows sharded.

    One jitted function per (devices, spec, tower) for the life of the process, so each bucket length compiles
    once and every later `encode_*` call (an ANCE refresh, the final evaluation) reuses it. Pure data parallel:
    the compiled program has no cross-device communication.
    """
    mesh = Mesh(np.asarray(devices), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def run(params, input_ids, attention_mask):
        return encode(params, spec, input_ids, attention_mask, tower=tower)

    options = inference_compiler_options(spec.dtype)  # float32 on CPU: Eigen GEMMs (jdr/models/cpu_options.py)
    jitted = jax.jit(run, in_shardings=(replicated, rows, rows), out_shardings=rows, compiler_options=options)
    return jitted, replicated, rows


@functools.cache
def _compiled_packed(devices: tuple, spec: EncoderSpec, tower: str, max_segments: int):
    """`_compiled` for packed rows: `(params, input_ids, segment_ids, position_ids) -> [B, max_segments, D]`."""
    _, replicated, rows = _compiled(devices, spec, tower)

    def run(params, input_ids, segment_ids, position_ids):
        return encode_packed(params, spec, input_ids, segment_ids, position_ids, tower=tower, max_segments=max_segments)

    options = inference_compiler_options(spec.dtype)
    return jax.jit(run, in_shardings=(replicated, rows, rows, rows), out_shardings=rows, compiler_options=options)


def check_max_length(spec: EncoderSpec, max_length: int) -> int:
    """`max_length` if the model's position table covers it, else one ValueError line (a longer input would read
    past the table: XLA clamps the gather and the embeddings come out wrong or NaN, silently)."""
    if not 1 <= max_length <= spec.bert.max_length:
        raise ValueError(
            f"max_length {max_length} is outside [1, {spec.bert.max_length}]: the model has "
            f"{spec.bert.max_position_embeddings} position embeddings"
        )
    return max_length


def encode_token_ids(
    params,
    spec: EncoderSpec,
    tokens: np.ndarray,
    offsets: np.ndarray,
    *,
    tower: str = "passage",
    pad_token_id: int = 0,
    max_length: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    desc: str | None = None,
    pack: bool = False,
) -> np.ndarray:
    """Embed N already-tokenised texts with `tower` -> float32 `[N, H]` in input order.

    Text i is `tokens[offsets[i]:offsets[i+1]]` (`tokens` int32 `[T]`, `offsets` int64 `[N+1]`, special tokens
    included — the layout of `jdr.data.batching.PretokenizedTexts`). A text longer than `max_length` (default: the
    tower's budget) is an error, not a silent cut that would drop its final [SEP].
    Texts are sorted by length, longest first; each batch pads to its `bucket_length` and to `batch_size` rows
    (rounded up to a multiple of the device count), so jit compiles once per bucket. Params are placed on the
    devices once per call; every batch is split over `devices` (default: all local devices).
    `pack=True`: several texts share a row instead (jdr.models.packing: rows of the longest text's bucket,
    one compilation), giving the same embeddings up to float rounding with less padding computed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = check_max_length(spec, max_length or spec.max_length(tower))
    tokens, offsets = np.asarray(tokens), np.asarray(offsets)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
        raise ValueError(f"offsets must be [N+1] from 0 to len(tokens)={len(tokens)}")
    lengths = np.diff(offsets)
    if len(lengths) and lengths.max() > max_length:
        row = int(lengths.argmax())
        raise ValueError(f"text {row} has {int(lengths[row])} tokens, more than max_length {max_length}")
    out = np.zeros((len(lengths), embedding_dim(params, spec)), np.float32)
    if not len(lengths):
        return out
    devices = tuple(devices or jax.local_devices())
    rows_per_batch = -(-batch_size // len(devices)) * len(devices)
    # Tied towers are the same function: one compilation serves queries and passages.
    fn, replicated, sharded_rows = _compiled(devices, spec, "query" if spec.tied else tower)
    params = jax.device_put(params, replicated)
    if pack:
        return _encode_packed(
            params,
            spec,
            tokens,
            offsets,
            lengths,
            out,
            tower="query" if spec.tied else tower,
            pad_token_id=pad_token_id,
            max_length=max_length,
            rows_per_batch=rows_per_batch,
            devices=devices,
            progress=progress,
            desc=desc or f"encode {tower} (packed)",
        )
    # Longest first: the biggest shapes (and any out-of-memory) come at the start, not after an hour.
    order = np.argsort(-lengths, kind="stable")
    pending = None  # the previous batch, fetched after the next one is dispatched (host work overlaps compute)
    for start in tqdm(
        range(0, len(order), rows_per_batch), disable=not progress, desc=desc or f"encode {tower}", unit="batch"
    ):
        rows = order[start : start + rows_per_batch]
        length = bucket_length(int(lengths[rows[0]]), max_length)
        ids, mask = pad_ragged(tokens, offsets, rows, length, pad_token_id, n_rows=rows_per_batch)
        # Placed explicitly: jit refuses host numpy inputs with a sharding once there are several processes.
        emb = fn(params, *jax.device_put((ids, mask), sharded_rows))
        if pending is not None:
            out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
        pending = (rows, emb)
    out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
    return out


def _encode_packed(
    params,
    spec,
    tokens,
    offsets,
    lengths,
    out,
    *,
    tower,
    pad_token_id,
    max_length,
    rows_per_batch,
    devices,
    progress,
    desc,
) -> np.ndarray:
    """`encode_token_ids(pack=True)`: plan the rows, then batches of `rows_per_batch` packed rows."""
    row_length = bucket_length(int(lengths.max()), max_length)
    plan = plan_packing(lengths, row_length, min(MAX_SEGMENTS, row_length))
    fn = _compiled_packed(devices, spec, tower, plan.max_segments)
    _, _, sharded_rows = _compiled(devices, spec, tower)
    order, bounds = texts_by_row(plan)
    pending = None  # as in encode_token_ids: fetch the previous batch after dispatching the next
    for first in tqdm(range(0, plan.n_rows, rows_per_batch), disable=not progress, desc=desc, unit="batch"):
        texts = order[bounds[first] : bounds[min(first + rows_per_batch, plan.n_rows)]]
        arrays = packed_rows(tokens, offsets, plan, texts, first, rows_per_batch, pad_token_id)
        emb = fn(params, *jax.device_put(arrays, sharded_rows))
        if pending is not None:
            _scatter(out, plan, *pending)
        pending = (texts, first, emb)
    _scatter(out, plan, *pending)
    return out


def _scatter(out: np.ndarray, plan, texts: np.ndarray, first: int, emb) -> None:
    out[texts] = np.asarray(emb)[plan.row_of[texts] - first, plan.slot_of[texts]]


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
    devices: Sequence[jax.Device] | None = None,
    pack: bool = False,
) -> np.ndarray:
    """Embed `texts` with `tower` -> float32 `[N, H]` in the input order: tokenise (truncating at `max_length`,
    default the tower's budget, which must fit the position table; the tower's prefix, `spec.prefix(tower)`, put
    before each text), then `encode_token_ids` (`pack`: see there)."""
    if isinstance(texts, str):
        raise ValueError("encode_texts: texts must be a sequence of strings, not one string")
    max_length = check_max_length(spec, max_length or spec.max_length(tower))
    tokens, offsets = ragged(token_ids(tokenizer, texts, max_length, prefix=spec.prefix(tower)))
    return encode_token_ids(
        params,
        spec,
        tokens,
        offsets,
        tower=tower,
        pad_token_id=pad_id(tokenizer),
        max_length=max_length,
        batch_size=batch_size,
        progress=progress,
        devices=devices,
        pack=pack,
    )
