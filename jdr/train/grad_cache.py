"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"): the exact
gradient of a contrastive loss over a large batch, with activation memory bounded by chunks of rows, not the batch.

The algorithm: (1) embed queries and passages in chunks of `c` rows without keeping activations, (2) compute the
loss over the whole (all-gathered) batch and its gradient with respect to the embeddings, (3) re-encode chunk by
chunk with the *same* dropout keys and pull the cached embedding gradients back into the parameters.

How: a `lax.scan` over the chunks whose body is `jax.checkpoint`ed (the form of luyug/GradCache's JAX `cachex
.grad_cached`), wrapped around the step's own `encode_fn`, so `make_train_step` runs GradCache unchanged — the same
loss functions, the same all_gather, the same metrics, any optax transformation (MultiSteps included). Reverse-
mode AD of that scan *is* steps (1)-(3): the forward scan saves only each chunk's inputs (token arrays and its
dropout key); the loss's backward pass produces the cached embedding gradients; the transposed scan re-runs each
chunk's forward from its saved inputs and pulls the cotangent back, summing parameter gradients in its carry.
Why this and not hand-written `jax.vjp` calls:
  * Same masks by construction: the recompute is the checkpointed body re-run on the same inputs, and the chunk's
    dropout key is one of those inputs. There is no second place where a key is derived that could drift (the
    silent wrong-gradient failure of implementations that reseed the recompute; RandContext in PyTorch).
  * Memory is bounded: each scan iteration's activations die with the iteration; XLA cannot common-subexpression-
    merge the forward and recompute passes (an unrolled Python loop of vjps invites exactly that, re-creating the
    full-batch activations), because they are bodies of two different while loops.
  * Compile time does not grow with the number of chunks: one body is compiled, not one copy per chunk.
One refinement over the original: the LAST chunk of each tower is encoded outside the scan and keeps its
activations, so it is never recomputed. That is exact and removes a tower's whole recompute when it fits in one
chunk (e.g. the queries of a per-device batch <= c); the cost is memory: XLA keeps that chunk alive while it
recomputes another, so the activation peak is ~two chunks per tower, not one (XLA's memory analysis, MiniLM,
256-token passages, c = 32: 10.8 GiB of temporaries at global batch 512, vs 42 GiB for the plain step at 128).
For the same memory that still recomputes fewer rows than remat of every chunk at twice the chunk size.

Dropout keys: chunk j of a tower uses `fold_in(tower_key, j)` (`chunk_keys`), so the random function GradCache
differentiates is `chunked_encoder(encode_fn, c, remat=False)`: `make_train_step` with that encoder (all
activations kept) is the reference GradCache equals to float tolerance (tests/test_grad_cache.py, dropout on, 1 and
8 devices). A tower that fits in one chunk is encoded exactly as the plain step does (same key), and with dropout
off GradCache equals the plain step itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jdr.train.step import EncodeFn, make_train_step

__all__ = ["chunk_keys", "chunked_encoder", "make_grad_cache_step", "check_grad_cache_chunk"]


def chunk_keys(rng: jax.Array, n_chunks: int) -> jax.Array:
    """The dropout key of each chunk of a tower: `[n_chunks]` keys `fold_in(rng, j)` (one key in, a key array out).
    Derived once per step and fed to the forward and the recompute alike."""
    return jax.vmap(lambda j: jax.random.fold_in(rng, j))(jnp.arange(n_chunks, dtype=jnp.uint32))


def _n_chunks(rows: int, chunk: int, tower: str) -> tuple[int, int]:
    size = min(chunk, rows)
    if rows % size:
        raise ValueError(f"train.grad_cache_chunk={chunk} does not divide the {rows} {tower} rows per device")
    return rows // size, size


def chunked_encoder(encode_fn: EncodeFn, chunk: int, *, remat: bool = True) -> EncodeFn:
    """Wrap `encode_fn(params, input_ids[N,L], attention_mask[N,L], tower, deterministic, rng) -> [N,H]` so it
    embeds the N rows in chunks of `chunk` (N must be a multiple of min(chunk, N)); same signature and result.

    Chunks 0..k-2 run in a `lax.scan`, `jax.checkpoint`ed when `remat` (GradCache: no activations kept, recomputed
    in the backward pass); the last chunk runs outside it and keeps its activations. `remat=False` is the
    reference the tests compare against: the same chunks and keys, every activation kept.
    """
    if chunk < 1:
        raise ValueError(f"train.grad_cache_chunk must be >= 1, got {chunk}")

    def encode(params, input_ids, attention_mask, tower, deterministic, rng):
        k, size = _n_chunks(input_ids.shape[0], chunk, tower)
        if k == 1:
            return encode_fn(params, input_ids, attention_mask, tower, deterministic, rng)
        keys = None if deterministic else chunk_keys(rng, k)
        ids = input_ids.reshape(k, size, *input_ids.shape[1:])
        mask = attention_mask.reshape(k, size, *attention_mask.shape[1:])

        def body(carry, xs):
            chunk_ids, chunk_mask, key = xs
            return carry, encode_fn(params, chunk_ids, chunk_mask, tower, deterministic, key)

        if remat:
            # prevent_cse=False: inside a scan XLA cannot merge the recompute with the forward pass anyway, and
            # the optimisation barriers prevent_cse inserts would only slow the body down.
            body = jax.checkpoint(body, prevent_cse=False)
        head_keys = None if keys is None else keys[:-1]
        _, head = lax.scan(body, None, (ids[:-1], mask[:-1], head_keys))
        tail = encode_fn(params, ids[-1], mask[-1], tower, deterministic, None if keys is None else keys[-1])
        return jnp.concatenate([head.reshape(-1, head.shape[-1]), tail], axis=0)

    return encode


def make_grad_cache_step(encode_fn: EncodeFn, *, chunk: int, **step_kwargs):
    """`make_train_step` (same keyword arguments, signature and metrics) whose towers are encoded in GradCache
    chunks of `chunk` rows per device: the gradient of the same loss over the whole batch, activations of at most
    one chunk per tower alive at a time."""
    return make_train_step(chunked_encoder(encode_fn, chunk), **step_kwargs)


def check_grad_cache_chunk(chunk: int, queries_per_device: int, group_size: int) -> None:
    """Config check before compile: `chunk` must divide each tower's rows per device (or cover them). Raises one
    ValueError line naming `train.grad_cache_chunk`."""
    if chunk < 0:
        raise ValueError(f"train.grad_cache_chunk must be >= 0 (0 = off), got {chunk}")
    if chunk == 0:
        return
    for rows, tower in ((queries_per_device, "query"), (queries_per_device * group_size, "passage")):
        if rows % min(chunk, rows):
            raise ValueError(
                f"train.grad_cache_chunk={chunk} does not divide the {rows} {tower} rows per device "
                f"({queries_per_device} queries x {group_size} passages each); use a divisor of {queries_per_device}"
            )
