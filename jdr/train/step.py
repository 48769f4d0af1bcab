"""The train step of every objective (`jdr.train.objectives`), written per device over a named axis so the same
function runs under `jax.pmap(axis_name=...)` or `jax.shard_map(..., check_vma=False)` over a Mesh axis (state
replicated, batch sharded; `tests/test_train_step.py` checks both give the same parameters). `check_vma=False` is
pmap's semantics: with shard_map's replication typing on, the gradient of replicated params would already be
summed over devices and the step's `pmean` would leave it D times too large. It knows nothing about BERT: the
encoder is injected."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdr.train.objectives.base import EncodeFn, Objective
from jdr.train.state import TrainState


def make_train_step(
    encode_fn: EncodeFn,
    objective: Objective | None = None,
    *,
    tx: optax.GradientTransformation,
    lr_at: Callable | None = None,
    axis_name: str = "batch",
    dropout: bool = True,
    loss_name: str | None = None,
    loss_kwargs: dict | None = None,
    cross_device_negatives: bool = True,
) -> Callable:
    """Build `train_step(state, batch, rng) -> (state, metrics)` for ONE device of a data-parallel map: the one
    step of every objective (`jdr.train.objectives`).

    `encode_fn(params, input_ids, attention_mask, tower, deterministic, rng) -> [B,H]` embeds a tower ("query" /
    "passage"); the trainer passes a partial of `jdr.models.encoder.encode` (whose spec dtype sets the compute
    dtype; the losses upcast to float32), or GradCache's chunked wrapper of it. The objective receives it with
    `deterministic = not dropout` bound. `objective` defaults to the plain contrastive objective of `loss_name`
    (a key of `jdr.losses.CONTRASTIVE`), `loss_kwargs` and `cross_device_negatives` (see
    `jdr.train.objectives.contrastive`); those three are shorthand for `Contrastive(...)`.

    Each call: checks the batch holds `objective.batch_keys`; derives the key `fold_in(fold_in(rng, state.step),
    axis_index)` (`rng` is the same base key on every device and every step, so no key is ever reused);
    differentiates `objective.loss`; `lax.pmean`s the gradients over `axis_name` (the update is the gradient of
    the mean loss over the global batch: see `jdr.losses.info_nce` on the all_gather transpose); applies `tx`;
    writes the objective's extra-state updates. `lr_at(step)` (from `make_optimizer`) adds the step's learning
    rate to the metrics. Metrics: loss and the objective's aux values (pmeaned), `grad_norm` (global norm of the
    averaged, unclipped gradient), `lr`.
    """
    if objective is None:
        from jdr.train.objectives.contrastive import Contrastive

        objective = Contrastive(loss_name, loss_kwargs or {}, cross_device_negatives=cross_device_negatives)
    elif loss_name is not None or loss_kwargs is not None:
        raise ValueError("make_train_step: pass an objective or loss_name/loss_kwargs, not both")
    encode = bind_dropout(encode_fn, dropout)

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        missing = [k for k in objective.batch_keys if k not in batch]
        if missing:
            raise ValueError(f"train batch is missing {', '.join(missing)}")
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(axis_name))

        def compute_loss(params):
            loss, aux, updates = objective.loss(encode, params, state, batch, rng, axis_name=axis_name)
            return loss, (aux, updates)

        (loss, (aux, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        grads = lax.pmean(grads, axis_name)
        new_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, new_updates)
        metrics = lax.pmean({"loss": loss, **aux}, axis_name)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if lr_at is not None:
            metrics["lr"] = jnp.asarray(lr_at(state.step), jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **updates), metrics

    return train_step


def bind_dropout(encode_fn: EncodeFn, dropout: bool):
    """`encode(params, input_ids, attention_mask, tower, rng)`: `encode_fn` with `deterministic = not dropout`."""

    def encode(params, input_ids, attention_mask, tower, rng):
        return encode_fn(params, input_ids, attention_mask, tower, not dropout, rng)

    return encode


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
            f"non-finite loss {value[~np.isfinite(value)].ravel()[0]!r} at step {step}: "
            "lower train.lr, check the data, or use float32"
        )
