"""The objective seam (jdr.train.objectives): picking an objective by config, and the one step running an objective
it knows nothing about (extra state, aux metrics, batch keys)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdr.config import train_config
from jdr.train.objectives import OBJECTIVES, Objective, objective_class, objective_name
from jdr.train.state import TrainState
from jdr.train.step import make_train_step, replicate, unreplicate


def _cfg(**train):
    cfg = train_config()
    with cfg.unlocked():
        for key, value in train.items():
            section, field = key.split("__")
            cfg[section][field] = value
    return cfg


def test_objective_name_follows_train_objective_and_the_legacy_switches():
    assert objective_name(_cfg()) == "contrastive"
    assert objective_name(_cfg(moco__enabled=True)) == "moco"
    assert objective_name(_cfg(ltre__enabled=True)) == "ltre"
    assert objective_name(_cfg(train__objective="moco")) == "moco"
    assert objective_class(_cfg()).__name__ == "Contrastive"
    assert {"contrastive", "moco", "ltre"} <= set(OBJECTIVES)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"train__objective": "matryoshka_typo"}, "train.objective: 'matryoshka_typo' is not one of contrastive, "),
        ({"train__objective": "contrastive", "moco__enabled": True}, "contradicts moco.enabled=True"),
        ({"moco__enabled": True, "ltre__enabled": True}, "exclude each other"),
    ],
)
def test_unknown_or_contradictory_objective_is_one_line(fields, message):
    with pytest.raises(ValueError, match=message):
        objective_class(_cfg(**fields))


class CountingState(TrainState):
    calls: jnp.ndarray


class SquaredNorm(Objective):
    """Loss = |w . x|^2 over the batch's `x`; extra state counts the calls (not registered: the step needs no
    registry entry, only the interface)."""

    name = "squared_norm_test"
    batch_keys = ("x",)

    def init_state(self, params, tx, *, spec=None, seed=0):
        return CountingState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), calls=jnp.zeros((), jnp.int32)
        )

    def loss(self, encode, params, state, batch, rng, *, axis_name):
        scores = batch["x"] @ params["w"]
        return jnp.mean(scores**2), {"mean_score": jnp.mean(scores)}, {"calls": state.calls + 1}


def test_the_one_step_runs_an_objective_it_knows_nothing_about():
    objective = SquaredNorm()
    params = {"w": jnp.asarray([1.0, -2.0])}
    step = jax.pmap(
        make_train_step(lambda *a: None, objective, tx=optax.sgd(0.1), dropout=False),
        axis_name="batch",
        in_axes=(0, 0, None),
        devices=jax.local_devices()[:1],
    )
    state = replicate(objective.init_state(params, optax.sgd(0.1)), jax.local_devices()[:1])
    x = np.asarray([[[1.0, 1.0], [2.0, 0.0]]], np.float32)  # [devices, B, 2]
    for _ in range(2):
        state, metrics = step(state, {"x": x}, jax.random.key(0))
    host = unreplicate(state)
    assert int(host.calls) == 2 and int(host.step) == 2  # the objective's extra state went through the step
    assert set(metrics) == {"loss", "mean_score", "grad_norm"}
    w = np.asarray([1.0, -2.0])
    for _ in range(2):  # sgd on mean((x w)^2): grad = 2 x^T (x w) / B
        w = w - 0.1 * 2 * x[0].T @ (x[0] @ w) / 2
    np.testing.assert_allclose(host.params["w"], w, rtol=1e-6)
    with pytest.raises(ValueError, match="train batch is missing x"):
        step(state, {"y": x}, jax.random.key(0))
