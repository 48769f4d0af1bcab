"""Dropout whose mask is a counter-based hash of (key, element index): the one dropout of jdr's models.

Why not `flax.linen.Dropout`: it draws `jax.random.bernoulli` bits, i.e. threefry2x32 for every element, which
XLA:CPU computes and materialises as a separate pass. In MiniLM's train step (q64/p256) that is ~0.4 billion
draws per step and made dropout ~45 % of the step on a 2-core CPU (rbg: ~19 %; 8- or 16-bit `random.bits`
slices: ~41 %, the cost is the pass, not the bit count). A keyed integer hash of each element's index is a
handful of shifts, xors and multiplies that XLA fuses into the elementwise op that consumes the mask and can
recompute in the backward pass instead of storing it: ~2 % of the step (A/B in `benchmarks/train_step.py`).

Properties kept: the mask is a pure function of (key, shape, element index) — same seed, same masks, bit-identical
resume, and the same bits on every backend (integer arithmetic only). The per-call key comes from flax's
"dropout" rng collection (`make_rng`: each call site folds its module path into the step's key), so layers and
towers get independent masks. Statistical quality: two rounds of a full-avalanche 32-bit mixer keyed by 64 key
bits; ample for dropout (tested: keep rate, neighbour and cross-key independence), not a cryptographic PRNG.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser ("lowbias32", C. Wellons): every input bit flips each output bit with p ~ 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 `shape`: 32 pseudo-random bits per element, a pure function of `key` (a typed PRNG key of any impl)
    and the element's row-major index. Shapes of 2**32 elements or more are refused (the index would wrap)."""
    if math.prod(shape) >= 2**32:
        raise ValueError(f"dropout: {shape} has 2**32 elements or more; split the batch")
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return _mix(_mix(index ^ words[0]) + words[-1])


def keep_threshold(rate: float) -> int:
    """Elements whose bits are >= this are kept: P(keep) = 1 - threshold / 2**32 (rate rounded to 2**-32)."""
    return round(rate * 2**32)


class Dropout(nn.Module):
    """Inverted dropout: `Dropout(rate)(x, deterministic)` zeroes each element with probability `rate` and scales
    the rest by 1 / (1 - rate); identity when `deterministic` or `rate == 0`. Needs the "dropout" rng collection
    (`apply(..., rngs={"dropout": key})`) when active."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {self.rate}")
        if deterministic or self.rate == 0.0:
            return x
        threshold = keep_threshold(self.rate)
        keep = hash_bits(self.make_rng("dropout"), x.shape) >= jnp.uint32(threshold)
        scale = jnp.asarray(2**32 / (2**32 - threshold), x.dtype)
        return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
