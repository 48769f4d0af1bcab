"""MoCo (He et al.; Contriever's main training mode): keys from a momentum copy of the encoder, and a FIFO queue of
past keys as extra negatives of every query.

- Key tower: `key_params <- momentum * key_params + (1 - momentum) * params`, updated at the start of each step
  with the parameters before that step's update (Contriever's `_momentum_update_key_encoder` order). It encodes
  the batch's passages (positives and any hard negatives); they get no gradient, so the optimizer trains the
  query encoder only — the one that is exported. Needs a tied encoder (`{"shared": ...}`): the key tower is a
  copy of the one tower.
- Queue: `[queue_size, H]` key embeddings, L2-normalised Gaussian noise at the start (as Contriever). Each query
  scores its positive against the batch's passages gathered over devices (in-batch negatives, which Contriever's
  MoCo does not use) AND every queue row (`jdr.losses.info_nce(..., extra_negatives=queue)`), the queue as it was
  before this step. Then the step's positive keys, all-gathered over the data axis in global batch order, overwrite
  the oldest rows at `queue_ptr`, which advances by the global batch (mod `queue_size`, a multiple of it). Every
  device enqueues the same gathered rows, so the queue stays replicated.
- With gradient accumulation the momentum update and the enqueue happen every micro-step (the queue holds real
  keys; the key tower moves toward parameters that change once per optimizer step).
Queue, pointer and key params live in `MocoState` (a `TrainState`), so orbax checkpoints and restores them.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jdr.losses import info_nce
from jdr.train.state import TrainState
from jdr.train.step import BATCH_KEYS, EncodeFn


class MocoState(TrainState):
    """`TrainState` plus `key_params` (the momentum tower, same tree as `params`), `queue` (`[K, H]` float32 key
    embeddings) and `queue_ptr` (int32 scalar: the row the next keys are written to)."""

    key_params: Any
    queue: jnp.ndarray
    queue_ptr: jnp.ndarray

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, *, queue_size: int, dim: int,
               seed: int = 0) -> "MocoState":
        """A step-0 state: key tower = a copy of `params`, queue = `queue_size` L2-normalised Gaussian rows of
        width `dim` (the embedding size) drawn from `seed`."""
        if queue_size < 1 or dim < 1:
            raise ValueError(f"moco: queue_size and dim must be >= 1, got {queue_size}, {dim}")
        queue = np.random.default_rng([seed, 0x4D6F436F]).standard_normal((queue_size, dim)).astype(np.float32)
        queue /= np.linalg.norm(queue, axis=1, keepdims=True)
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   key_params=jax.tree.map(jnp.array, params), queue=jnp.asarray(queue),
                   queue_ptr=jnp.zeros((), jnp.int32))


def make_moco_train_step(
    encode_fn: EncodeFn,
    *,
    loss_name: str,
    loss_kwargs: dict,
    tx: optax.GradientTransformation,
    momentum: float,
    lr_at: Callable | None = None,
    axis_name: str = "batch",
    cross_device_negatives: bool = True,
    dropout: bool = True,
) -> Callable:
    """Build `train_step(state: MocoState, batch, rng) -> (state, metrics)` for ONE device of a data-parallel map.

    Arguments, batch layout, rng handling and metrics are those of `jdr.train.step.make_train_step` (the loss
    must be "info_nce"); `momentum` in [0, 1) is the key tower's EMA factor (Contriever: 0.999). The key encode
    draws its own dropout key (the key tower runs in train mode, as Contriever's does by default).
    """
    if loss_name != "info_nce":
        raise ValueError(f"train.loss: MoCo needs 'info_nce' (a softmax over the queue), got {loss_name!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"moco.momentum must be in [0, 1), got {momentum}")
    loss_axis = axis_name if cross_device_negatives else None

    def train_step(state: MocoState, batch: dict, rng: jax.Array):
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"train batch is missing {', '.join(missing)}")
        b, n_passages = batch["query_ids"].shape[0], batch["passage_ids"].shape[0]
        if n_passages % b:
            raise ValueError(f"passage_ids has {n_passages} rows, not a multiple of the {b} queries")
        group_size = n_passages // b
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(axis_name))
        q_rng, k_rng = jax.random.split(rng)
        deterministic = not dropout

        key_params = jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * q, state.key_params, state.params)
        keys = lax.stop_gradient(
            encode_fn(key_params, batch["passage_ids"], batch["passage_mask"], "passage", deterministic, k_rng))

        def compute_loss(params):
            q = encode_fn(params, batch["query_ids"], batch["query_mask"], "query", deterministic, q_rng)
            return info_nce(q, keys, group_size=group_size, axis_name=loss_axis, extra_negatives=state.queue,
                            **masks, **loss_kwargs)

        (loss, aux), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        grads = lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = lax.pmean({"loss": loss, **aux}, axis_name)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if lr_at is not None:
            metrics["lr"] = jnp.asarray(lr_at(state.step), jnp.float32)

        # Enqueue this step's positive keys of the whole global batch (device order = global batch order).
        new = lax.all_gather(keys[::group_size], axis_name, tiled=True).astype(state.queue.dtype)
        size = state.queue.shape[0]
        if size % new.shape[0]:
            raise ValueError(f"moco.queue_size {size} is not a multiple of the global batch {new.shape[0]}")
        queue = lax.dynamic_update_slice(state.queue, new, (state.queue_ptr, jnp.int32(0)))
        ptr = (state.queue_ptr + new.shape[0]) % size
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, key_params=key_params,
                             queue=queue, queue_ptr=ptr.astype(jnp.int32)), metrics

    return train_step
