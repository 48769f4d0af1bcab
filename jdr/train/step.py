"""The contrastive train step, written per device over a named axis so the same function runs under
`jax.pmap(axis_name=...)` or `jax.shard_map(..., check_vma=False)` over a Mesh axis (state replicated, batch
sharded; `tests/test_train_step.py` checks both give the same parameters). `check_vma=False` is pmap's semantics:
with shard_map's replication typing on, the gradient of replicated params would already be summed over devices
and the step's `pmean` would leave it D times too large. It knows nothing about BERT: the encoder is injected."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdr.losses import CONTRASTIVE
from jdr.train.state import TrainState

BATCH_KEYS = ("query_ids", "query_mask", "passage_ids", "passage_mask")

EncodeFn = Callable[..., jax.Array]  # (params, input_ids, attention_mask, tower, deterministic, rng) -> [B,H]


def make_train_step(
    encode_fn: EncodeFn,
    *,
    loss_name: str,
    loss_kwargs: dict,
    tx: optax.GradientTransformation,
    lr_at: Callable | None = None,
    axis_name: str = "batch",
    cross_device_negatives: bool = True,
    dropout: bool = True,
) -> Callable:
    """Build `train_step(state, batch, rng) -> (state, metrics)` for ONE device of a data-parallel map.

    `encode_fn(params, input_ids, attention_mask, tower, deterministic, rng) -> [B,H]` embeds a tower ("query" /
    "passage"); the trainer passes a partial of `jdr.models.encoder.encode` (whose spec dtype sets the compute
    dtype; the losses upcast to float32). `loss_name` is a key of `jdr.losses.CONTRASTIVE` ("info_nce",
    "triplet"), `loss_kwargs` its keyword arguments other than `group_size` / `axis_name` (e.g. temperature).
    `batch` holds this device's int32 `query_ids[B,Lq]`, `query_mask[B,Lq]`, `passage_ids[B*G,Lp]`,
    `passage_mask[B*G,Lp]`, and optionally `false_negatives[B, columns]` (bool, see `jdr.losses.info_nce`);
    the group size G is read from the shapes. With `cross_device_negatives` the loss
    all-gathers passages over `axis_name` (global in-batch negatives); gradients and metrics are `lax.pmean`ed
    over `axis_name` either way, so the update is the gradient of the mean loss over the global batch.
    `rng` is the same base key on every device and every step: the step folds in `state.step` and the device's
    axis index, then splits separate dropout keys for queries and passages, so no key is ever reused.
    `lr_at(step)` (from `make_optimizer`) adds the step's learning rate to the metrics.
    Metrics: loss, the loss's aux values, `grad_norm` (global norm of the averaged, unclipped gradient), `lr`.
    """
    if loss_name not in CONTRASTIVE:
        raise ValueError(f"train.loss: {loss_name!r} is not one of {', '.join(CONTRASTIVE)}")
    loss_fn = CONTRASTIVE[loss_name]
    loss_axis = axis_name if cross_device_negatives else None

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"train batch is missing {', '.join(missing)}")
        b, n_passages = batch["query_ids"].shape[0], batch["passage_ids"].shape[0]
        if n_passages % b:
            raise ValueError(f"passage_ids has {n_passages} rows, not a multiple of the {b} queries")
        group_size = n_passages // b
        # Optional bool [B, columns]: (query, passage) pairs the labels call relevant, kept out of the softmax.
        masks = {"false_negatives": batch["false_negatives"]} if "false_negatives" in batch else {}

        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(axis_name))
        q_rng, p_rng = jax.random.split(rng)
        deterministic = not dropout

        def compute_loss(params):
            q = encode_fn(params, batch["query_ids"], batch["query_mask"], "query", deterministic, q_rng)
            p = encode_fn(params, batch["passage_ids"], batch["passage_mask"], "passage", deterministic, p_rng)
            return loss_fn(q, p, group_size=group_size, axis_name=loss_axis, **masks, **loss_kwargs)

        (loss, aux), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        # See jdr.losses.info_nce: the all_gather transpose already routed every query's gradient to the
        # device that encoded the passage, so a plain mean over devices is the global-mean gradient.
        grads = lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = lax.pmean({"loss": loss, **aux}, axis_name)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if lr_at is not None:
            metrics["lr"] = jnp.asarray(lr_at(state.step), jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def pmap_train_step(train_step: Callable, axis_name: str = "batch") -> Callable:
    """`jax.pmap` of a per-device step over local devices: state (replicated, donated) and batch carry a leading
    device axis; the rng is one unreplicated key (`in_axes=None`). Donation lets XLA update params in place:
    the caller must not touch the state it passed in after the call."""
    return jax.pmap(train_step, axis_name=axis_name, in_axes=(0, 0, None), donate_argnums=(0,))


def replicate(tree, devices=None, axis_name: str = "batch"):
    """Copy a pytree onto each of `devices` (default: the local devices) with a leading device axis, for the
    pmapped step: leaf `[...]` becomes `[D, ...]`, device i holding row i.

    Placed with `jax.device_put`-style sharding on a 1-D mesh whose axis is named like the pmap axis, which is
    the sharding pmap gives its outputs: with any other placement the second call sees new input shardings and
    compiles the whole step again. Each device's row is made from the host value directly (no [D, ...] host copy).
    """
    devices = list(devices or jax.local_devices())
    sharding = NamedSharding(Mesh(np.asarray(devices), (axis_name,)), PartitionSpec(axis_name))

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback((len(devices),) + x.shape, sharding, lambda _: x[None])

    return jax.tree_util.tree_map(put, tree)


def unreplicate(tree):
    """Device 0's copy of a replicated pytree, as host numpy arrays (all copies are equal: updates use pmean'd
    gradients). Each leaf is a plain transfer of one shard: `x[0]` would compile and run a gather over all local
    devices, a computation that hung multi-process CPU runs under load. Copied, since on CPU a host view could
    alias a buffer the next (donating) step overwrites."""

    def first(x):
        return np.array(np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)[0], copy=True)

    return jax.tree_util.tree_map(first, tree)


def check_finite(step: int, loss) -> None:
    """Host-side guard the loop calls each step: raise FloatingPointError naming `step` if `loss` (a device
    scalar or per-device array of the step's loss) is NaN or infinite, so training never goes on silently."""
    value = np.asarray(jax.device_get(loss), dtype=np.float64)
    if not np.all(np.isfinite(value)):
        raise FloatingPointError(
            f"non-finite loss {value[~np.isfinite(value)].ravel()[0]!r} at step {step}: lower train.lr, check the data, or use float32"
        )
