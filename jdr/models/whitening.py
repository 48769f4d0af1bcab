"""Whitening of sentence embeddings (Su et al. 2021, "Whitening sentence representations"; the post-hoc half of
whitening-based contrastive learning): `y = (x - mu) W`, then L2, with `W = U diag(1 / sqrt(S + eps))[:, :k]`
from the SVD of the embeddings' covariance `U S U^T`; keeping the first k columns reduces the dimension.

The transform is affine, so a whitened model is the same encoder plus a sentence-transformers `Dense` module
(identity activation, weight `W^T`, bias `-mu W`) and a `Normalize`: `add_whitening` folds it into the params
and `EncoderSpec` (`dense="identity"`), and `jdr.models.hf.export` writes the ST module files, so the exported
dir loads in sentence-transformers and in `jdr.models.hf.load` alike.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jdr.models.encoder import EncoderSpec, embedding_dim


@dataclasses.dataclass(frozen=True)
class Whitening:
    """`mean[H]` and `kernel[H, k]` (float64), plus the covariance spectrum `singular_values[H]` (descending)."""

    mean: np.ndarray
    kernel: np.ndarray
    singular_values: np.ndarray

    @property
    def bias(self) -> np.ndarray:
        """`-mean @ kernel`: the affine layer's bias."""
        return -self.mean @ self.kernel

    def __call__(self, x: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """Whiten `x[N, H]` -> float32 `[N, k]` (L2-normalised rows when `normalize`)."""
        y = (np.asarray(x, np.float64) - self.mean) @ self.kernel
        if normalize:
            y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float32)


def fit_whitening(embeddings: np.ndarray, *, dim: int | None = None, eps: float = 1e-8) -> Whitening:
    """Fit on `embeddings[N, H]` (e.g. a corpus encoded by the model): mean, covariance (population, 1/N), SVD.

    `dim`: keep the k = dim leading directions (None: all H). `eps` keeps directions of near-zero variance from
    blowing up; with `eps = 0` and k = H, the whitened fit set has exactly the identity covariance.
    """
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"whitening: need embeddings [N >= 2, H], got shape {x.shape}")
    k = x.shape[1] if dim is None else dim
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"whitening: dim must be in [1, {x.shape[1]}], got {dim}")
    if eps < 0:
        raise ValueError(f"whitening: eps must be >= 0, got {eps}")
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False, bias=True)
    u, s, _ = np.linalg.svd(cov, hermitian=True)
    if s[k - 1] + eps <= 0:
        raise ValueError(f"whitening: direction {k} has zero variance; lower dim or raise eps")
    return Whitening(mean, u[:, :k] / np.sqrt(s[:k] + eps)[None, :], s)


def add_whitening(params: dict, spec: EncoderSpec, whitening: Whitening) -> tuple[dict, EncoderSpec]:
    """The encoder followed by `whitening` and L2 -> `(params, spec)` with an identity `Dense` layer.

    `whitening` must have been fit on this encoder's own outputs. A model without a Dense layer gets one (after
    its `Normalize`, if it had one: Pooling, Normalize, Dense, Normalize); a model whose last step is an identity
    Dense is composed with it (`x A + a` becomes `x A W + (a - mu) W`). A Dense followed by Normalize, or a tanh
    Dense, cannot absorb another affine map: ValueError.
    """
    width = embedding_dim(params, spec)
    if whitening.kernel.shape[0] != width:
        raise ValueError(f"whitening fit on width {whitening.kernel.shape[0]}, the model outputs {width}")
    kernel, bias = whitening.kernel, whitening.bias
    before = spec.normalize
    if spec.dense is not None:
        if spec.dense != "identity" or spec.normalize:
            raise ValueError(
                "whitening: the model's Dense layer is followed by Normalize or tanh; an affine "
                "whitening cannot be folded into it"
            )
        a = np.asarray(params["dense"]["kernel"], np.float64)
        b0 = np.asarray(params["dense"]["bias"], np.float64)
        kernel, bias, before = (
            a @ whitening.kernel,
            (b0 - whitening.mean) @ whitening.kernel,
            spec.normalize_before_dense,
        )
    out = dict(params)
    out["dense"] = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    return out, dataclasses.replace(spec, dense="identity", normalize_before_dense=before, normalize=True)
