"""The optimizer: global-norm clipping + AdamW (no decay on biases / LayerNorm) + warmup and decay, optionally
accumulated over micro-steps with optax.MultiSteps. Everything is an optax transformation."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")


def decay_mask(params):
    """Pytree of bools matching `params`: True where AdamW's weight decay applies.

    Biases and every LayerNorm parameter (scale and bias, the embeddings' LayerNorm included) are left out, as
    in BERT / sentence-transformers fine-tuning (HF's `no_decay = ["bias", "LayerNorm.weight"]`). So is the
    BERT pooler: pooling never uses it, it gets no gradient, and decay alone would shrink the weights that an
    export hands back to Hugging Face.
    """

    def decays(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return names[-1] != "bias" and not any("layernorm" in n.lower() or n == "pooler" for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_schedule(*, lr: float, warmup_steps: int, total_steps: int, schedule: str = "linear") -> optax.Schedule:
    """Learning rate per optimizer update: linear warmup 0 -> `lr` over `warmup_steps`, then `schedule`:
    "linear" (to 0 at `total_steps`), "cosine" (to 0 at `total_steps`) or "constant"."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) and total_steps >= 1")
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, decay_steps=total_steps, end_value=0.0)
    if schedule == "linear":
        decay = optax.linear_schedule(lr, 0.0, total_steps - warmup_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "linear",
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    grad_clip_norm: float = 1.0,
    grad_accum_steps: int = 1,
) -> tuple[optax.GradientTransformation, Callable]:
    """Build the optax optimizer from the `train.*` config values.

    `total_steps` and `warmup_steps` count optimizer updates. `grad_clip_norm` 0 turns clipping off. With
    `grad_accum_steps` k > 1 the chain is wrapped in `optax.MultiSteps`: k calls average their gradients and the
    k-th applies one update (the others return zero updates).
    Returns `(tx, lr_at)`: `lr_at(train_step)` is the learning rate applied by the update of 0-based train step
    (micro-step) `train_step`, for logging.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if grad_clip_norm < 0:
        raise ValueError(f"train.grad_clip_norm must be >= 0, got {grad_clip_norm}")
    sched = make_schedule(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule)
    parts = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm > 0 else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    tx = optax.chain(*parts)
    if grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps).gradient_transformation()

    def lr_at(train_step):
        return sched(train_step // grad_accum_steps)

    return tx, lr_at
