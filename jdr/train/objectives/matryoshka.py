"""Matryoshka objective (Kusupati et al. 2022; sentence-transformers' MatryoshkaLoss): the contrastive loss summed
over nested prefixes of the embedding, so that its first k dimensions are an embedding of their own (`jdr encode
--dim k`, `jdr evaluate --dim k`, sentence-transformers' `truncate_dim`).

loss = sum_i w_i * L(q[:, :d_i], p[:, :d_i]), L the contrastive loss of `train.loss` with all its options (hard
negatives, in-batch negatives gathered over devices, the false-negative mask, EBR's hardest in-batch hinge). Each
prefix is re-normalised when the encoder normalises (`model.normalize`: what `--dim k` returns at inference, and
ST's cosine over a truncated embedding); an unnormalised encoder's prefixes are scored as they are. The towers are
encoded once; only the loss is evaluated per prefix, so GradCache (`train.grad_cache_chunk`, which wraps the
encoder) composes unchanged.

Batch: as the contrastive objective (`jdr.train.objectives.contrastive`). Config: `train.objective =
"matryoshka"`, `train.matryoshka_dims` ("384,256,128,64,32": distinct, each at most the embedding width),
`train.matryoshka_weights` ("" = 1 each, else one non-negative weight per dim, not all 0), plus every key of the
contrastive objective. Metrics: the summed `loss`, the full-width loss's aux values, and `loss@<d>` per prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jdr.models.pooling import l2_normalize
from jdr.train.objectives.base import register
from jdr.train.objectives.contrastive import Contrastive, group_size_of


def parse_dims(dims: str, weights: str = "") -> tuple[tuple[int, ...], tuple[float, ...]]:
    """`"384,256,128"`, `"1,1,0.5"` -> ((384, 256, 128), (1.0, 1.0, 0.5)); bad values are one ValueError line.
    A `--config.train.matryoshka_dims=64,32` override arrives as the text of a tuple, "(64, 32)": brackets go."""
    dims, weights = str(dims).strip("()[] "), str(weights).strip("()[] ")
    try:
        ds = tuple(int(x) for x in dims.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"train.matryoshka_dims: expected comma-separated integers, got {dims!r}") from None
    if not ds or min(ds) < 1 or len(set(ds)) != len(ds):
        raise ValueError(f"train.matryoshka_dims: need distinct dims >= 1, got {dims!r}")
    if not weights:
        return ds, (1.0,) * len(ds)
    try:
        ws = tuple(float(x) for x in weights.split(","))
    except ValueError:
        raise ValueError(f"train.matryoshka_weights: expected comma-separated numbers, got {weights!r}") from None
    if len(ws) != len(ds) or min(ws) < 0 or not sum(ws):
        raise ValueError(
            f"train.matryoshka_weights: need {len(ds)} weights >= 0 (one per dim, not all 0), got {weights!r}"
        )
    return ds, ws


def matryoshka_loss(
    loss_fn: Callable, q, p, *, dims: Sequence[int], weights: Sequence[float], renormalize: bool, **kwargs
):
    """`(sum_i w_i * loss_fn(q[:, :d_i], p[:, :d_i], **kwargs), aux)`; prefixes re-normalised when `renormalize`.
    aux: `loss_fn`'s aux at the widest prefix and `loss@<d>` for every prefix."""
    width = q.shape[-1]
    if max(dims) > width:
        raise ValueError(f"train.matryoshka_dims: {max(dims)} exceeds the embedding width {width}")
    extra = kwargs.pop("extra_negatives", None)
    total, aux, widest = 0.0, {}, max(dims)

    def cut(x, d):
        x = x[..., :d]
        return l2_normalize(x) if renormalize else x

    for d, w in zip(dims, weights):
        extra_d = {} if extra is None else {"extra_negatives": cut(jnp.asarray(extra), d)}
        loss, prefix_aux = loss_fn(cut(q, d), cut(p, d), **kwargs, **extra_d)
        total = total + w * loss
        aux[f"loss@{d}"] = loss
        if d == widest:
            aux.update(prefix_aux)
    return total, aux


@register
class Matryoshka(Contrastive):
    """The contrastive objective over nested prefixes `dims` with `weights`; `renormalize` is set from the
    encoder (`init_state`: `spec.normalize`) unless given (True when neither, e.g. a bare `make_train_step`)."""

    name = "matryoshka"

    def __init__(
        self,
        loss_name: str,
        loss_kwargs: dict,
        *,
        dims: Sequence[int],
        weights: Sequence[float],
        cross_device_negatives: bool = True,
        renormalize: bool | None = None,
    ):
        super().__init__(loss_name, loss_kwargs, cross_device_negatives=cross_device_negatives)
        self.dims, self.weights = tuple(dims), tuple(weights)
        if len(self.dims) != len(self.weights):
            raise ValueError(f"matryoshka: {len(self.dims)} dims but {len(self.weights)} weights")
        self.renormalize = renormalize

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        super().validate(cfg, per_device)
        parse_dims(cfg.train.matryoshka_dims, cfg.train.matryoshka_weights)

    @classmethod
    def from_config(cls, cfg) -> Matryoshka:
        dims, weights = parse_dims(cfg.train.matryoshka_dims, cfg.train.matryoshka_weights)
        return cls(
            cfg.train.loss,
            cls.loss_kwargs_of(cfg),
            dims=dims,
            weights=weights,
            cross_device_negatives=cfg.train.cross_device_negatives,
        )

    def check_encoder(self, params, spec) -> None:
        from jdr.models.encoder import embedding_dim

        width = embedding_dim(params, spec)
        if max(self.dims) > width:
            raise ValueError(f"train.matryoshka_dims: {max(self.dims)} exceeds the model's embedding width {width}")

    def init_state(self, params, tx, *, spec=None, seed: int = 0):
        if spec is not None and self.renormalize is None:
            self.renormalize = bool(spec.normalize)
        return super().init_state(params, tx, spec=spec, seed=seed)

    def loss(self, encode, params, state, batch, rng, *, axis_name):
        group_size = group_size_of(batch)
        q_rng, p_rng = jax.random.split(rng)
        q = encode(params, batch["query_ids"], batch["query_mask"], "query", q_rng)
        p = encode(params, batch["passage_ids"], batch["passage_mask"], "passage", p_rng)
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}
        renormalize = True if self.renormalize is None else self.renormalize
        loss, aux = matryoshka_loss(
            self.loss_fn,
            q,
            p,
            dims=self.dims,
            weights=self.weights,
            renormalize=renormalize,
            group_size=group_size,
            axis_name=axis_name if self.cross_device_negatives else None,
            **masks,
            **self.loss_kwargs,
        )
        return loss, aux, {}
