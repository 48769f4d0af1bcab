"""The differentiable IVF + PQ quantiser of Distill-VQ (Xiao et al., SIGIR 2022), as pure JAX functions.

Parameters (`params`, the trainable pytree): `codebooks` [M, K, d/M] and, when `nlist > 0`, `centroids` [nlist, d].
Frozen state lives outside `params` in `VQIndex`:
  * `rotation` [d, d] — the OPQ matrix read from faiss (`faiss.OPQMatrix.A`, rows = output dims) or None. It is
    FROZEN: Distill-VQ's gains come from the codebooks/centroids, and keeping it fixed keeps it exactly
    orthonormal, so `q·d == (Rq)·(Rd)` and the teacher's scores are unchanged by the rotation.
  * `lists` [N] int32 — each document's IVF list. We KEEP the list faiss assigned at init (as LibVQ does) rather
    than re-assigning to the nearest moving centroid: the list choice is discrete (no gradient), keeping it fixed
    makes the training objective stationary, and the export then writes each document into the same list with
    `add_core(precomputed_idx=lists)`, so jdr's score and faiss's score are the same ADC formula on the same codes.
    The residual is always taken against the *current* centroid of the kept list.
Everything is in the rotated space: rotate queries and documents with `rotate` before scoring.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "VQSpec",
    "VQIndex",
    "rotate",
    "residuals",
    "pq_sqdist",
    "quantize",
    "soft_reconstruct",
    "encode",
    "decode",
    "doc_centroids",
]


@dataclasses.dataclass(frozen=True)
class VQSpec:
    """Shape of the quantiser: d dims, M sub-spaces of K codewords (log2 K bits each), nlist IVF lists (0 = pure PQ),
    opq = learned OPQ rotation. Invalid shapes raise a one-line ValueError."""

    d: int
    M: int
    K: int = 256
    nlist: int = 0
    opq: bool = False

    def __post_init__(self):
        if self.d <= 0 or self.M <= 0:
            raise ValueError(f"VQSpec: d={self.d} and M={self.M} must be positive")
        if self.d % self.M:
            raise ValueError(f"VQSpec: d={self.d} is not divisible by M={self.M} (PQ sub-spaces must be equal)")
        if not 2 <= self.K <= 256 or self.K & (self.K - 1):
            raise ValueError(f"VQSpec: K={self.K} must be a power of two in [2, 256] (faiss PQ codes of <= 8 bits)")
        if self.nlist < 0:
            raise ValueError(f"VQSpec: nlist={self.nlist} must be >= 0 (0 = no IVF)")

    @property
    def dsub(self) -> int:
        return self.d // self.M

    @property
    def nbits(self) -> int:
        return int(self.K).bit_length() - 1

    @property
    def code_bytes(self) -> int:
        """Bytes per document code (faiss packs M codes of nbits each)."""
        return (self.M * self.nbits + 7) // 8

    def factory(self) -> str:
        """The faiss index_factory string of this shape, e.g. "OPQ16,IVF256,PQ16x8"."""
        parts = ([f"OPQ{self.M}"] if self.opq else []) + ([f"IVF{self.nlist}"] if self.nlist else [])
        return ",".join(parts + [f"PQ{self.M}x{self.nbits}"])


@dataclasses.dataclass
class VQIndex:
    """A Distill-VQ index: `params` (trainable: codebooks [M,K,d/M], centroids [nlist,d] if IVF), the frozen OPQ
    `rotation` [d,d] or None, and each document's kept IVF list `lists` [N] int32 (zeros when nlist == 0)."""

    spec: VQSpec
    params: dict[str, Any]
    rotation: np.ndarray | None
    lists: np.ndarray


def rotate(x: jax.Array, rotation: jax.Array | None) -> jax.Array:
    """Apply the OPQ rotation to rows: x [..., d] -> x @ R^T (faiss LinearTransform convention y = A x)."""
    return x if rotation is None else x @ rotation.T


def doc_centroids(params: dict, lists: jax.Array) -> jax.Array | None:
    """The centroid of each document's list: lists [...] int -> [..., d], or None without IVF."""
    return params["centroids"][lists] if "centroids" in params else None


def residuals(params: dict, x_rot: jax.Array, lists: jax.Array) -> jax.Array:
    """Rotated vectors minus their list's current centroid: x_rot [..., d], lists [...] -> [..., d]."""
    c = doc_centroids(params, lists)
    return x_rot if c is None else x_rot - c


def pq_sqdist(codebooks: jax.Array, r: jax.Array) -> jax.Array:
    """Squared L2 distance of each sub-vector to each codeword: codebooks [M,K,s], r [..., M*s] -> [..., M, K]."""
    M, K, s = codebooks.shape
    rs = r.reshape(r.shape[:-1] + (M, s))
    # ||r||² - 2 r·c + ||c||²: one matmul instead of an [..., M, K, s] difference tensor.
    cross = jnp.einsum("...ms,mks->...mk", rs, codebooks)
    return jnp.sum(rs * rs, -1)[..., None] - 2.0 * cross + jnp.sum(codebooks * codebooks, -1)


def quantize(params: dict, x_rot: jax.Array, lists: jax.Array, tau: float) -> tuple[jax.Array, jax.Array]:
    """Differentiable reconstruction: x_rot [..., d], lists [...] -> (recon [..., d], codes [..., M] int32).

    Soft assignment p = softmax(-||r_m - c_mk||² / tau) per sub-space. Straight-through on the assignment
    (LibVQ's form): a = onehot(argmin) + p - stop_gradient(p), recon = centroid + a @ codebook. The forward value
    is exactly the hard decoding; gradients reach the assignment (and through it the residual and centroids) via
    the soft path, and the selected codewords directly, as in hard k-means.
    """
    cb = params["codebooks"]
    r = residuals(params, x_rot, lists)
    dist = pq_sqdist(cb, r)
    codes = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    soft = jax.nn.softmax(-dist / tau, axis=-1)
    assign = jax.nn.one_hot(codes, cb.shape[1], dtype=soft.dtype) + soft - jax.lax.stop_gradient(soft)
    rec = jnp.einsum("...mk,mks->...ms", assign, cb).reshape(x_rot.shape)
    c = doc_centroids(params, lists)
    return (rec if c is None else c + rec), codes


def soft_reconstruct(params: dict, x_rot: jax.Array, lists: jax.Array, tau: float) -> jax.Array:
    """The pure soft path (no straight-through): centroid + softmax(-dist / tau) @ codebook, [..., d] -> [..., d].
    Tends to the hard decoding as tau -> 0; `quantize` uses its gradient."""
    cb = params["codebooks"]
    soft = jax.nn.softmax(-pq_sqdist(cb, residuals(params, x_rot, lists)) / tau, axis=-1)
    rec = jnp.einsum("...mk,mks->...ms", soft, cb).reshape(x_rot.shape)
    c = doc_centroids(params, lists)
    return rec if c is None else c + rec


def encode(params: dict, x_rot: jax.Array, lists: jax.Array) -> jax.Array:
    """Hard PQ codes (argmin L2, faiss's rule) of rotated vectors in their lists: [..., d] -> [..., M] int32."""
    dist = pq_sqdist(params["codebooks"], residuals(params, x_rot, lists))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def decode(params: dict, codes: jax.Array, lists: jax.Array) -> jax.Array:
    """Exact hard reconstruction in the rotated space: codes [..., M] int, lists [...] -> [..., d]."""
    cb = params["codebooks"]
    M = cb.shape[0]
    rec = cb[jnp.arange(M), codes].reshape(codes.shape[:-1] + (M * cb.shape[2],))
    c = doc_centroids(params, lists)
    return rec if c is None else c + rec
