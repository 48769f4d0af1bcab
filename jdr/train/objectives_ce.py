"""Two objectives over the ordinary training batch: the cross-encoder's (localized-contrastive or BCE over each query's
group) and the bi-encoder's distillation from teacher scores (Margin-MSE or listwise KL, optionally + InfoNCE).

Each is a `loss_fn(params, batch, rng) -> (loss, aux)` for ONE device of a data-parallel map: the batch is what
`jdr.data.batching.BatchBuilder` makes for every objective (`query_ids/query_mask [B, Lq]`, `passage_ids/
passage_mask [B*G, Lp]`, and `teacher_scores [B, G]` when the source carries scores), so sources, negatives,
the loop, checkpoints and preemption are the ones every run uses. `objective_step` wraps a loss_fn in the
step's fixed frame (rng per step and device, value_and_grad, pmean of gradients and metrics, optax update).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jdr.losses_rerank import RERANK, distill
from jdr.models.cross_encoder import CrossEncoderSpec, join_pairs, score

LossFn = Callable[..., tuple]  # (params, batch, rng) -> (loss, aux)


def cross_encoder_loss(spec: CrossEncoderSpec, *, loss: str = "localized_contrastive", temperature: float = 1.0,
                       sep_id: int | None = None, dropout: bool = True) -> LossFn:
    """The cross-encoder objective: each (query, passage) of a group joined into one pair on device
    (`join_pairs`: BERT's `[CLS] q [SEP] p [SEP]`, RoBERTa's with `sep_id`), scored, and `RERANK[loss]` over the
    `[B, G]` logits (`temperature` divides them for localized_contrastive). Purely per device: no collective."""
    if loss not in RERANK:
        raise ValueError(f"cross_encoder.loss must be one of {', '.join(RERANK)}, got {loss!r}")
    kwargs = {"temperature": temperature} if loss == "localized_contrastive" else {}

    def loss_fn(params, batch, rng):
        b, n = batch["query_ids"].shape[0], batch["passage_ids"].shape[0]
        ids, mask, types = join_pairs(batch["query_ids"], batch["query_mask"], batch["passage_ids"],
                                      batch["passage_mask"], sep_id=sep_id)
        logits = score(params, spec, ids, mask, types, deterministic=not dropout, rng=rng)
        return RERANK[loss](logits.reshape(b, n // b), **kwargs)

    return loss_fn


def distill_loss(encode_fn, *, loss: str, temperature: float, teacher_temperature: float = 1.0,
                 info_nce_weight: float = 0.0, axis_name: str | None = "batch", dropout: bool = True) -> LossFn:
    """The bi-encoder's distillation objective (`jdr.losses_rerank.distill`) against `batch["teacher_scores"]`;
    `encode_fn` as `jdr.train.step.make_train_step` takes it. InfoNCE (weight > 0) gathers passages over
    `axis_name` like the contrastive step."""

    def loss_fn(params, batch, rng):
        if "teacher_scores" not in batch:
            raise ValueError("distillation needs teacher scores in the batch: a `jsonl` source with a `score` on "
                             "every passage (`jdr score`)")
        q_rng, p_rng = jax.random.split(rng)
        q = encode_fn(params, batch["query_ids"], batch["query_mask"], "query", not dropout, q_rng)
        p = encode_fn(params, batch["passage_ids"], batch["passage_mask"], "passage", not dropout, p_rng)
        group = batch["passage_ids"].shape[0] // batch["query_ids"].shape[0]
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}
        return distill(q, p, batch["teacher_scores"], loss=loss, group_size=group, temperature=temperature,
                       teacher_temperature=teacher_temperature, info_nce_weight=info_nce_weight,
                       axis_name=axis_name, **masks)

    return loss_fn


def objective_step(loss_fn: LossFn, *, tx: optax.GradientTransformation, lr_at: Callable | None = None,
                   axis_name: str = "batch") -> Callable:
    """`train_step(state, batch, rng) -> (state, metrics)` for one device: rng = fold_in(fold_in(base, step),
    axis index) as in `jdr.train.step`, gradient of `loss_fn`, `lax.pmean` of gradients and metrics over
    `axis_name` (the update is the gradient of the mean loss over the global batch: every device holds the same
    number of groups), then the optax update. Metrics: loss, the loss's aux, grad_norm, lr."""

    def train_step(state, batch, rng):
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(axis_name))
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        grads = lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = lax.pmean({"loss": loss, **aux}, axis_name)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if lr_at is not None:
            metrics["lr"] = jnp.asarray(lr_at(state.step), jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step
