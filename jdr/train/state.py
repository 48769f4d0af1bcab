"""The training state: a pytree the step transforms and the checkpointer saves. The optimizer lives in the step's
closure, not in the state, so the state is plain arrays (pmappable, donatable, orbax-serialisable)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """`step` (int32 scalar: train steps taken, micro-steps when accumulating), `params`, `opt_state`."""

    step: jnp.ndarray
    params: Any
    opt_state: optax.OptState

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> TrainState:
        """A step-0 state for `params` (any pytree of float arrays) and the optimizer `tx`."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
