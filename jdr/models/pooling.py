"""Pooling of token states into one vector per sequence, as sentence-transformers' Pooling/Normalize modules do."""

from __future__ import annotations

import jax.numpy as jnp

POOLING_MODES = ("cls", "mean", "max")


def pool(hidden, mask, mode: str):
    """Pool `hidden[B,L,H]` over the positions where `mask[B,L]` is 1, by `mode` (cls|mean|max) -> [B,H] float32."""
    hidden = hidden.astype(jnp.float32)
    m = mask.astype(jnp.float32)[:, :, None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        # The 1e-9 floor mirrors sentence-transformers and keeps an all-padding row finite.
        return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    if mode == "max":
        return jnp.max(jnp.where(m > 0, hidden, -1e9), axis=1)
    raise ValueError(f"pooling: unknown mode {mode!r} (known: {', '.join(POOLING_MODES)})")


def l2_normalize(x, eps: float = 1e-12):
    """Divide each row of `x[B,H]` by its L2 norm (floored at `eps`, as torch.nn.functional.normalize) -> [B,H]."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)
