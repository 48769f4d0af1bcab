"""The cross-encoder and distillation objectives in the one train step: pmapped over 8 devices they give the loss
and gradient of one device holding the global batch; both are registered `train.objective` names."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdr.losses_rerank import RERANK, distill
from jdr.models import encoder as enc
from jdr.models import hf
from jdr.models.cross_encoder import join_pairs, score
from jdr.models.cross_encoder_hf import load_cross_encoder
from jdr.models.testing import write_tiny_model
from jdr.train.objectives import OBJECTIVES, objective_class
from jdr.train.objectives.cross_encoder import CrossEncoder
from jdr.train.objectives.distill import Distill
from jdr.train.state import TrainState
from jdr.train.step import make_train_step, pmap_train_step, replicate, unreplicate

N_DEV, PER_DEVICE, GROUP = 8, 2, 3
GRAD_PROBE = optax.GradientTransformation(  # state = the pmean'd gradient the step applied; update zero
    init=lambda p: jax.tree.map(jnp.zeros_like, p),
    update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny") / "bert",
        hidden_size=16,
        num_layers=1,
        intermediate_size=32,
        max_position_embeddings=64,
    )


def _batch(seed, n_queries, lq=6, lp=8, vocab=60):
    r = np.random.default_rng(seed)

    def tokens(n, length):  # [CLS]=2 ... [SEP]=3, right padded
        lengths = r.integers(3, length + 1, size=n)
        ids = r.integers(5, vocab, size=(n, length)).astype(np.int32)
        ids[:, 0] = 2
        ids[np.arange(n), lengths - 1] = 3
        mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
        return ids * mask, mask

    qi, qm = tokens(n_queries, lq)
    pi, pm = tokens(n_queries * GROUP, lp)
    return {
        "query_ids": qi,
        "query_mask": qm,
        "passage_ids": pi,
        "passage_mask": pm,
        "teacher_scores": r.normal(size=(n_queries, GROUP)).astype(np.float32) * 3,
    }


def _shard(batch):
    return {k: v.reshape(N_DEV, v.shape[0] // N_DEV, *v.shape[1:]) for k, v in batch.items()}


def _check_same(metrics, new_state, ref_loss, ref_grads):
    np.testing.assert_allclose(np.asarray(metrics["loss"]), float(ref_loss), rtol=1e-5)
    pmap_grads = unreplicate(new_state.opt_state)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    assert scale > 0
    for path, ref in jax.tree_util.tree_leaves_with_path(ref_grads):
        got = functools.reduce(lambda t, k: t[k.key], path, pmap_grads)
        # float32 sums in another order (8 devices x 6 pairs, then a mean); measured worst case 4e-4 of the largest
        # gradient (position 0, summed over every pair). A missing or doubled pmean would be off by 8x.
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("loss", ["localized_contrastive"])  # bce differs only in the pure loss (tested by hand)
def test_cross_encoder_step_on_eight_devices_equals_one_device(tiny_dir, loss):
    params, spec, _ = load_cross_encoder(tiny_dir, seed=0)
    # A head of normal(0, 0.02) gives logits ~0 and gradients ~1e-5, near the float32 noise of a zero gradient
    # (the classifier bias under the softmax); a trained head's scale makes the comparison meaningful.
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 100
    batch = _batch(0, N_DEV * PER_DEVICE)
    objective = CrossEncoder(loss, dropout=False)
    objective.spec = spec  # what load_model sets from the config
    step = make_train_step(lambda *a: None, objective, tx=GRAD_PROBE, dropout=False)
    state = replicate(TrainState.create(params, GRAD_PROBE))
    new_state, metrics = pmap_train_step(step)(state, _shard(batch), jax.random.key(0))

    def full_loss(p):
        ids, mask, types = join_pairs(
            batch["query_ids"], batch["query_mask"], batch["passage_ids"], batch["passage_mask"]
        )
        return RERANK[loss](score(p, spec, ids, mask, types).reshape(-1, GROUP))[0]

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(full_loss))(params)
    _check_same(metrics, new_state, ref_loss, ref_grads)
    assert {"accuracy", "pos_score", "neg_score", "grad_norm"} <= set(metrics)


@pytest.mark.parametrize("loss,weight", [("kl", 0.5)])  # KL + gathered InfoNCE; margin_mse is tested by hand
def test_distill_step_on_eight_devices_equals_one_device(tiny_dir, loss, weight):
    params, spec, _ = hf.load(tiny_dir)

    def encode_fn(p, ids, mask, tower, deterministic, rng):
        return enc.encode(p, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    batch = _batch(1, N_DEV * PER_DEVICE)
    kw = dict(loss=loss, temperature=0.05, teacher_temperature=2.0, info_nce_weight=weight)
    step = make_train_step(encode_fn, Distill(**kw), tx=GRAD_PROBE, dropout=False)
    state = replicate(TrainState.create(params, GRAD_PROBE))
    new_state, metrics = pmap_train_step(step)(state, _shard(batch), jax.random.key(0))

    def full_loss(p):
        q = encode_fn(p, batch["query_ids"], batch["query_mask"], "query", True, None)
        ps = encode_fn(p, batch["passage_ids"], batch["passage_mask"], "passage", True, None)
        return distill(q, ps, batch["teacher_scores"], group_size=GROUP, **kw)[0]

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(full_loss))(params)
    _check_same(metrics, new_state, ref_loss, ref_grads)
    assert "top1_agreement" in metrics and ("info_nce_loss" in metrics) == (weight > 0)


def test_both_objectives_are_registered_names():
    from jdr.config import train_config

    cfg = train_config()
    for name in ("cross_encoder", "distill"):
        with cfg.unlocked():
            cfg.train.objective = name
        assert objective_class(cfg) is OBJECTIVES[name]
