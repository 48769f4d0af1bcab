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
- Queue false negatives: with `queue_size` >= the pairs of an epoch, a query's own document (or another document
  its labels call relevant) sits in the queue as a negative. When the batch carries document ids (`DocIdBatches`,
  on with `data.mask_false_negatives`), each queue row is tagged with its positive's id (`queue_ids`, -1 for
  the initial noise) and rows whose id is relevant to the query are dropped from its softmax, like in-batch false
  negatives; metric `queue_false_negatives`: dropped (query, queue row) pairs in the global batch.
- With gradient accumulation the momentum update and the enqueue happen every micro-step (the queue holds real
  keys; the key tower moves toward parameters that change once per optimizer step).
Queue, ids, pointer and key params live in `MocoState` (a `TrainState`), so orbax checkpoints and restores them.

Batch: the contrastive batch (`jdr.train.objectives.contrastive`), optionally `positive_ids[B]` int32 (hashed
document id of each positive, `doc_id_hash`) and `relevant_ids[B, R]` int32 (hashed ids of each query's relevant
documents, -1 padded). Config: `moco.momentum` in [0, 1), `moco.queue_size` (a positive multiple of
`train.global_batch_size`), `train.loss = "info_nce"` (`train.temperature`), `model.tied = True`, no GradCache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jdr.losses import info_nce
from jdr.train.objectives.base import Objective, register
from jdr.train.objectives.contrastive import Contrastive, group_size_of
from jdr.train.state import TrainState


class MocoState(TrainState):
    """`TrainState` plus `key_params` (the momentum tower, same tree as `params`), `queue` (`[K, H]` float32 key
    embeddings), `queue_ids` (`[K]` int32 hashed document id of each row, -1 = none) and `queue_ptr` (int32
    scalar: the row the next keys are written to)."""

    key_params: Any
    queue: jnp.ndarray
    queue_ids: jnp.ndarray
    queue_ptr: jnp.ndarray

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, *, queue_size: int, dim: int, seed: int = 0) -> MocoState:
        """A step-0 state: key tower = a copy of `params`, queue = `queue_size` L2-normalised Gaussian rows of
        width `dim` (the embedding size) drawn from `seed`, ids all -1."""
        if queue_size < 1 or dim < 1:
            raise ValueError(f"moco: queue_size and dim must be >= 1, got {queue_size}, {dim}")
        queue = np.random.default_rng([seed, 0x4D6F436F]).standard_normal((queue_size, dim)).astype(np.float32)
        queue /= np.linalg.norm(queue, axis=1, keepdims=True)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            key_params=jax.tree.map(jnp.array, params),
            queue=jnp.asarray(queue),
            queue_ids=jnp.full((queue_size,), -1, jnp.int32),
            queue_ptr=jnp.zeros((), jnp.int32),
        )


@register
class Moco(Objective):
    """`momentum`: the key tower's EMA factor; `loss_kwargs`: `info_nce`'s (temperature, hard_in_batch_*);
    `queue_size`: rows of the queue (used by `init_state`)."""

    name = "moco"

    def __init__(self, *, momentum: float, loss_kwargs: dict, queue_size: int = 0, cross_device_negatives: bool = True):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"moco.momentum must be in [0, 1), got {momentum}")
        self.momentum, self.loss_kwargs, self.queue_size = momentum, dict(loss_kwargs), queue_size
        self.cross_device_negatives = cross_device_negatives

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        Contrastive.validate(cfg, per_device)
        checks = [
            (cfg.train.loss == "info_nce", "moco needs train.loss=info_nce"),
            (cfg.model.tied, "moco needs model.tied=True (the key tower is a momentum copy of the one tower)"),
            (0.0 <= cfg.moco.momentum < 1.0, f"moco.momentum must be in [0, 1), got {cfg.moco.momentum}"),
            (
                cfg.moco.queue_size > 0 and cfg.moco.queue_size % cfg.train.global_batch_size == 0,
                f"moco.queue_size {cfg.moco.queue_size} must be a positive multiple of train.global_batch_size",
            ),
            (
                not cfg.train.grad_cache_chunk,
                "moco and train.grad_cache_chunk: GradCache runs the plain contrastive step only",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_config(cls, cfg) -> Moco:
        return cls(
            momentum=cfg.moco.momentum,
            loss_kwargs=Contrastive.loss_kwargs_of(cfg),
            queue_size=cfg.moco.queue_size,
            cross_device_negatives=cfg.train.cross_device_negatives,
        )

    def masks_false_negatives(self) -> bool:
        return True

    def init_state(self, params, tx, *, spec=None, seed: int = 0) -> MocoState:
        from jdr.models.encoder import embedding_dim

        return MocoState.create(params, tx, queue_size=self.queue_size, dim=embedding_dim(params, spec), seed=seed)

    def attach(self, run, *, progress: bool = True) -> None:
        if run.batches.false_negatives:  # data.mask_false_negatives: mask the queue too
            run.batches = DocIdBatches(run.batches)

    def loss(self, encode, params, state: MocoState, batch, rng, *, axis_name):
        group_size = group_size_of(batch)
        q_rng, k_rng = jax.random.split(rng)
        m = self.momentum
        key_params = lax.stop_gradient(jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, state.key_params, params))
        keys = lax.stop_gradient(encode(key_params, batch["passage_ids"], batch["passage_mask"], "passage", k_rng))
        q = encode(params, batch["query_ids"], batch["query_mask"], "query", q_rng)
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}
        queue_mask = None
        if "relevant_ids" in batch:
            queue_mask = queue_false_negatives(batch["relevant_ids"], state.queue_ids)
            masks["extra_false_negatives"] = queue_mask
        loss, aux = info_nce(
            q,
            keys,
            group_size=group_size,
            axis_name=axis_name if self.cross_device_negatives else None,
            extra_negatives=state.queue,
            **masks,
            **self.loss_kwargs,
        )
        if queue_mask is not None:
            aux["queue_false_negatives"] = lax.psum(jnp.sum(queue_mask).astype(jnp.float32), axis_name)

        # Enqueue this step's positive keys of the whole global batch (device order = global batch order).
        new = lax.all_gather(keys[::group_size], axis_name, tiled=True).astype(state.queue.dtype)
        size = state.queue.shape[0]
        if size % new.shape[0]:
            raise ValueError(f"moco.queue_size {size} is not a multiple of the global batch {new.shape[0]}")
        queue = lax.dynamic_update_slice(state.queue, new, (state.queue_ptr, jnp.int32(0)))
        queue_ids = state.queue_ids
        if "positive_ids" in batch:
            new_ids = lax.all_gather(batch["positive_ids"].astype(jnp.int32), axis_name, tiled=True)
            queue_ids = lax.dynamic_update_slice(queue_ids, new_ids, (state.queue_ptr,))
        ptr = ((state.queue_ptr + new.shape[0]) % size).astype(jnp.int32)
        return loss, aux, {"key_params": key_params, "queue": queue, "queue_ids": queue_ids, "queue_ptr": ptr}


def queue_false_negatives(relevant_ids, queue_ids):
    """bool `[B, K]`: queue row k holds a document relevant to query b (`relevant_ids[B, R]`, -1 padded;
    `queue_ids[K]`, -1 for rows of no document)."""
    hit = relevant_ids[:, :, None] == queue_ids[None, None, :]
    return jnp.any(hit & (relevant_ids[:, :, None] >= 0), axis=1)


def doc_id_hash(key: str) -> int:
    """A document key as a non-negative int32 (first 31 bits of its BLAKE2b digest): the same on every host and
    run. Two documents sharing a hash (~n^2 / 2^32 pairs among n documents) would mask each other."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


class DocIdBatches:
    """The run's `BatchBuilder` plus MoCo's document ids: `positive_ids [D, B/D]` (each positive's key, hashed) and
    `relevant_ids [D, B/D, R]` (each query's `Example.relevant`, hashed, -1 padded; R = the global batch's largest
    relevant set rounded up to a power of two, so a shape change, and a compile, is rare)."""

    def __init__(self, builder):
        self.builder = builder

    def __getattr__(self, name):  # the builder's settings (false_negatives, cross_device, ...)
        return getattr(self.builder, name)

    def __call__(self, examples) -> dict[str, np.ndarray]:
        from jdr.distributed import host_rows

        arrays = self.builder(examples)
        width = 1 << (max(len(ex.relevant) for ex in examples) - 1).bit_length()
        host = examples[host_rows(len(examples), self.builder.process_index, self.builder.process_count)]
        relevant = np.full((len(host), width), -1, np.int32)
        for r, ex in enumerate(host):
            relevant[r, : len(ex.relevant)] = sorted(doc_id_hash(k) for k in ex.relevant)
        positive = np.asarray([doc_id_hash(ex.passage_keys[0]) for ex in host], np.int32)
        d = arrays["query_ids"].shape[0]
        return {**arrays, "positive_ids": positive.reshape(d, -1), "relevant_ids": relevant.reshape(d, -1, width)}


def make_moco_train_step(
    encode_fn,
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
    """`jdr.train.step.make_train_step` with the `Moco` objective (`loss_name` must be "info_nce"): the per-device
    `train_step(state: MocoState, batch, rng) -> (state, metrics)`. The key encode draws its own dropout key (the
    key tower runs in train mode, as Contriever's does by default)."""
    from jdr.train.step import make_train_step

    if loss_name != "info_nce":
        raise ValueError(f"train.loss: MoCo needs 'info_nce' (a softmax over the queue), got {loss_name!r}")
    objective = Moco(momentum=momentum, loss_kwargs=loss_kwargs, cross_device_negatives=cross_device_negatives)
    return make_train_step(encode_fn, objective, tx=tx, lr_at=lr_at, axis_name=axis_name, dropout=dropout)
