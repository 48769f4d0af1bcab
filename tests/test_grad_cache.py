"""GradCache equals the plain step (dropout on) in loss and every gradient leaf, on 1 and 8 devices, with the
false-negative mask and with optax.MultiSteps; a recompute with other dropout keys would be caught; memory is
bounded by a chunk (XLA's memory analysis of the compiled steps)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdr import losses
from jdr.models import encoder as enc
from jdr.models import hf
from jdr.models.testing import write_tiny_model
from jdr.train.grad_cache import check_grad_cache_chunk, chunk_keys, chunked_encoder, make_grad_cache_step
from jdr.train.optim import make_optimizer
from jdr.train.state import TrainState
from jdr.train.step import make_train_step, pmap_train_step, replicate, unreplicate

N_DEV = 8
INFO_NCE = {"loss_name": "info_nce", "loss_kwargs": {"temperature": 0.05}}

# The optimizer state is the (pmean'd) gradient the step applied; the update is zero (as in test_train_step.py).
GRAD_PROBE = optax.GradientTransformation(
    init=lambda p: jax.tree.map(jnp.zeros_like, p),
    update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(params, spec, encode_fn) of a 1-layer random BERT, hidden 16, dropout 0.1 (hidden and attention)."""
    path = write_tiny_model(tmp_path_factory.mktemp("gc") / "bert", hidden_size=16, num_layers=1, intermediate_size=32)
    params, spec, _ = hf.load(path)
    assert spec.bert.hidden_dropout_prob > 0 and spec.bert.attention_probs_dropout_prob > 0

    def encode_fn(params, ids, mask, tower, deterministic, rng):
        return enc.encode(params, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    return params, spec, encode_fn


def bag_encode(params, ids, mask, tower, deterministic, rng):
    """A cheap encoder with dropout (embedding bag + dense) for the tests about the step, not the model."""
    x = params["emb"][ids] * mask[..., None]
    if not deterministic:
        x = x * jax.random.bernoulli(rng, 0.8, x.shape) / 0.8
    return jnp.tanh(x.sum(1) / mask.sum(1, keepdims=True) @ params["dense"])


BAG_PARAMS = {
    "emb": jax.random.normal(jax.random.key(0), (60, 8)),
    "dense": jax.random.normal(jax.random.key(1), (8, 8)),
}


def _batch(seed, n_queries, group_size, lq=6, lp=8, vocab=60):
    r = np.random.default_rng(seed)

    def tokens(n, length):
        ids = r.integers(5, vocab, size=(n, length)).astype(np.int32)
        lengths = r.integers(2, length + 1, size=n)
        mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
        return ids * mask, mask

    qi, qm = tokens(n_queries, lq)
    pi, pm = tokens(n_queries * group_size, lp)
    return {"query_ids": qi, "query_mask": qm, "passage_ids": pi, "passage_mask": pm}


def _shard(batch, n):
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}


def _run(step_fn, params, batch, n_dev, tx=GRAD_PROBE, steps=1, rng=jax.random.key(7)):
    """Run a per-device step pmapped over `n_dev` devices; (state on host, metrics of the last step)."""
    step = (
        pmap_train_step(step_fn)
        if n_dev == N_DEV
        else jax.pmap(step_fn, axis_name="batch", in_axes=(0, 0, None), devices=jax.local_devices()[:n_dev])
    )
    state = replicate(TrainState.create(params, tx), jax.local_devices()[:n_dev])
    for _ in range(steps):
        state, metrics = step(state, _shard(batch, n_dev), rng)
    return unreplicate(state), jax.device_get(metrics)


def _assert_trees_close(got, ref, rtol=1e-5):
    """Every leaf to rtol, with an atol tied to the largest entry anywhere (some leaves are ~1e-12 noise)."""
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(ref))
    assert scale > 0
    for path, want in jax.tree_util.tree_leaves_with_path(ref):
        have = functools.reduce(lambda t, k: t[k.key], path, got)
        np.testing.assert_allclose(have, want, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path))


def _max_rel_diff(a, b):
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(b))
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) / scale


@pytest.mark.parametrize("n_dev,per_device,chunk", [(1, 8, 2), (N_DEV, 2, 1)])
def test_grad_cache_with_dropout_equals_the_step_over_the_same_chunks_and_keys(tiny, n_dev, per_device, chunk):
    """Dropout on: loss, metrics and every gradient leaf equal the plain step whose encoder embeds the same chunks
    with the same keys, all activations kept (`chunked_encoder(remat=False)`) — not the unchunked plain step."""
    params, _, encode_fn = tiny
    group_size = 2
    batch = _batch(0, n_dev * per_device, group_size)
    gc_state, gc_metrics = _run(
        make_grad_cache_step(encode_fn, chunk=chunk, tx=GRAD_PROBE, **INFO_NCE), params, batch, n_dev
    )
    ref_step = make_train_step(chunked_encoder(encode_fn, chunk, remat=False), tx=GRAD_PROBE, **INFO_NCE)
    ref_state, ref_metrics = _run(ref_step, params, batch, n_dev)
    for k in ("loss", "accuracy", "pos_score", "neg_score", "grad_norm"):
        np.testing.assert_allclose(gc_metrics[k], ref_metrics[k], rtol=1e-5, err_msg=k)
    _assert_trees_close(gc_state.opt_state, ref_state.opt_state)
    # Dropout really is on and really matters: another step key gives a gradient far outside the tolerance.
    other_state, _ = _run(ref_step, params, batch, n_dev, rng=jax.random.key(8))
    assert _max_rel_diff(other_state.opt_state, ref_state.opt_state) > 1e-2
    # The unchunked plain step draws one key per tower, so its dropout masks (and gradient) differ.
    plain_state, _ = _run(make_train_step(encode_fn, tx=GRAD_PROBE, **INFO_NCE), params, batch, n_dev)
    assert _max_rel_diff(plain_state.opt_state, ref_state.opt_state) > 1e-2


def test_grad_cache_without_dropout_equals_the_plain_step_on_the_tiny_bert(tiny):
    """Dropout off, 8 devices, the real encoder: GradCache in chunks of 1 row equals `make_train_step` itself (the
    one plain step, unchunked encoder): loss, metrics and every gradient leaf."""
    params, _, encode_fn = tiny
    batch = _batch(2, N_DEV * 2, 2)
    gc_state, gc_metrics = _run(
        make_grad_cache_step(encode_fn, chunk=1, tx=GRAD_PROBE, dropout=False, **INFO_NCE), params, batch, N_DEV
    )
    ref_state, ref_metrics = _run(
        make_train_step(encode_fn, tx=GRAD_PROBE, dropout=False, **INFO_NCE), params, batch, N_DEV
    )
    for k in ("loss", "accuracy", "pos_score", "neg_score", "grad_norm"):
        np.testing.assert_allclose(gc_metrics[k], ref_metrics[k], rtol=1e-5, err_msg=k)
    _assert_trees_close(gc_state.opt_state, ref_state.opt_state)


def test_grad_cache_without_dropout_is_the_plain_step():
    """Dropout off: GradCache equals the unmodified plain step on 8 devices, with a false-negative mask."""
    params, encode_fn = BAG_PARAMS, bag_encode
    per_device, group_size = 2, 2
    batch = _batch(1, N_DEV * per_device, group_size)
    columns = N_DEV * per_device * group_size
    fn = np.zeros((N_DEV * per_device, columns), bool)
    fn[0, 5] = fn[3, 20] = fn[9, 2] = True  # (query, gathered passage) pairs labelled relevant
    batch["false_negatives"] = fn
    gc_state, gc_metrics = _run(
        make_grad_cache_step(encode_fn, chunk=1, tx=GRAD_PROBE, dropout=False, **INFO_NCE), params, batch, N_DEV
    )
    ref_state, ref_metrics = _run(
        make_train_step(encode_fn, tx=GRAD_PROBE, dropout=False, **INFO_NCE), params, batch, N_DEV
    )
    assert float(ref_metrics["false_negatives"][0]) == 3.0
    for k in ("loss", "false_negatives", "grad_norm"):
        np.testing.assert_allclose(gc_metrics[k], ref_metrics[k], rtol=1e-5, err_msg=k)
    _assert_trees_close(gc_state.opt_state, ref_state.opt_state)


def test_recompute_with_other_dropout_keys_is_caught(tiny):
    """The known failure of GradCache ports: the recompute draws other dropout masks than the cached forward.

    A hand-written GradCache (forward without grad, loss gradient w.r.t. the embeddings, then a jax.vjp per chunk)
    equals the reference when the recompute reuses the forward's keys — and is far outside the equality test's
    1e-5 when it draws fresh ones, so that test would fail for such an implementation."""
    params, _, encode_fn = tiny
    batch = {k: jnp.asarray(v) for k, v in _batch(2, 4, 2).items()}
    chunk, tower_keys = 2, {"query": jax.random.key(11), "passage": jax.random.key(12)}
    forward = jax.jit(lambda p, i, m, k, tower: encode_fn(p, i, m, tower, False, k), static_argnums=4)

    @functools.partial(jax.jit, static_argnums=5)
    def pull_back(p, i, m, k, ct, tower):
        return jax.vjp(lambda w: encode_fn(w, i, m, tower, False, k), p)[1](ct)[0]

    inputs = {
        t: (
            batch[f"{t}_ids"].reshape(-1, chunk, batch[f"{t}_ids"].shape[1]),
            batch[f"{t}_mask"].reshape(-1, chunk, batch[f"{t}_mask"].shape[1]),
        )
        for t in tower_keys
    }
    keys = {t: chunk_keys(k, inputs[t][0].shape[0]) for t, k in tower_keys.items()}

    def manual_grad_cache(recompute_keys):
        embed = {
            t: jnp.concatenate([forward(params, i, m, k, t) for i, m, k in zip(*inputs[t], keys[t])])
            for t in tower_keys
        }
        loss, cached = jax.value_and_grad(
            lambda e: losses.info_nce(e["query"], e["passage"], temperature=0.05, group_size=2)[0]
        )(embed)
        grads = jax.tree.map(jnp.zeros_like, params)
        for t in tower_keys:
            for i, m, k, ct in zip(*inputs[t], recompute_keys[t], cached[t].reshape(-1, chunk, cached[t].shape[1])):
                grads = jax.tree.map(jnp.add, grads, pull_back(params, i, m, k, ct, t))
        return loss, grads

    def reference(p):
        enc_fn = chunked_encoder(encode_fn, chunk, remat=False)
        q = enc_fn(p, batch["query_ids"], batch["query_mask"], "query", False, tower_keys["query"])
        ps = enc_fn(p, batch["passage_ids"], batch["passage_mask"], "passage", False, tower_keys["passage"])
        return losses.info_nce(q, ps, temperature=0.05, group_size=2)[0]

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(params)
    same_loss, same_keys = manual_grad_cache(keys)
    np.testing.assert_allclose(same_loss, ref_loss, rtol=1e-5)
    _assert_trees_close(same_keys, ref_grads)
    fresh = {t: chunk_keys(jax.random.fold_in(k, 1), len(keys[t])) for t, k in tower_keys.items()}
    _, fresh_keys = manual_grad_cache(fresh)
    assert _max_rel_diff(fresh_keys, ref_grads) > 1e-2  # >> the 1e-5 the equality test allows


def test_grad_cache_with_multisteps_accumulation():
    """Two micro-steps through optax.MultiSteps (AdamW, clipping), dropout on: GradCache and the plain step over
    the same chunks end with equal parameters."""
    params, encode_fn = BAG_PARAMS, bag_encode
    tx, _ = make_optimizer(lr=1e-2, total_steps=4, warmup_steps=0, grad_accum_steps=2)
    batch = _batch(3, 4, 2)
    gc, _ = _run(make_grad_cache_step(encode_fn, chunk=2, tx=tx, **INFO_NCE), params, batch, 1, tx=tx, steps=2)
    ref, _ = _run(
        make_train_step(chunked_encoder(encode_fn, 2, remat=False), tx=tx, **INFO_NCE), params, batch, 1, tx=tx, steps=2
    )
    assert _max_rel_diff(ref.params, jax.device_get(params)) > 1e-4  # the 2nd micro-step applied an update
    _assert_trees_close(gc.params, ref.params)


def _temp_bytes(step_fn, params, batch):
    step = jax.pmap(step_fn, axis_name="batch", in_axes=(0, 0, None), devices=jax.local_devices()[:1])
    state = replicate(TrainState.create(params, GRAD_PROBE), jax.local_devices()[:1])
    compiled = step.lower(state, _shard(batch, 1), jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_is_bounded_by_the_chunk(tiny):
    """XLA's memory analysis of the compiled steps (nothing runs): GradCache with chunks of 4 rows at a 16x bigger
    batch needs about the temporaries of the plain step at a 4-query batch (its peak: the kept last chunk plus one
    recomputed chunk per tower) — not 16x (the plain step at 64 queries needs ~19x; tiny BERT, 64-token passages)."""
    params, _, encode_fn = tiny
    plain = make_train_step(encode_fn, tx=GRAD_PROBE, **INFO_NCE)
    cached = make_grad_cache_step(encode_fn, chunk=4, tx=GRAD_PROBE, **INFO_NCE)
    one_chunk = _temp_bytes(plain, params, _batch(4, 4, 2, lq=16, lp=64))
    big = _temp_bytes(cached, params, _batch(4, 64, 2, lq=16, lp=64))
    assert big < 1.5 * one_chunk, (big, one_chunk)


def test_chunk_config_errors():
    check_grad_cache_chunk(0, 6, 2)
    check_grad_cache_chunk(3, 6, 2)
    check_grad_cache_chunk(16, 6, 2)  # covers both towers: one chunk each... passages 12 rows <= 16
    with pytest.raises(ValueError, match=r"train.grad_cache_chunk=4 does not divide the 6 query rows"):
        check_grad_cache_chunk(4, 6, 2)
    with pytest.raises(ValueError, match=r"train.grad_cache_chunk=8 does not divide the 12 passage rows"):
        check_grad_cache_chunk(8, 6, 2)
    with pytest.raises(ValueError, match="must be >= 0"):
        check_grad_cache_chunk(-1, 6, 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        chunked_encoder(lambda *a: None, 0)


def _train_cfg(tiny_model, toy_beir, *overrides):
    from jdr.config import load_config

    return load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={toy_beir}",
            "train.steps=3",
            "checkpoint.every=0",
            "eval.every=0",
            "eval.final_test=false",
            "export.at_end=false",
            "log.every=1",
            "log.tensorboard=false",
            *overrides,
        ],
    )


def test_jdr_train_with_grad_cache_and_hardest_in_batch(tiny_model, toy_beir, tmp_path):
    """The config keys reach the real trainer: GradCache chunks of 1 row and EBR's k = 2 on 8 devices."""
    import json

    from jdr.train.trainer import train

    final = train(
        _train_cfg(tiny_model, toy_beir, "train.grad_cache_chunk=1", "train.hard_in_batch_k=2"),
        tmp_path / "run",
        progress=False,
    )
    assert final["step"] == 3
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train/loss"]) and "train/hard_in_batch_loss" in r for r in logged if "train/loss" in r)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.grad_cache_chunk=3", "train.grad_cache_chunk=3 does not divide the 4 passage rows per device"),
        ("train.hard_in_batch_k=31", "train.hard_in_batch_k=31 exceeds the 30 in-batch passages of other queries"),
        ("ltre.enabled=true", "ltre.enabled needs model.tied=False"),
    ],
)
def test_train_config_errors_before_compile(tiny_model, toy_beir, tmp_path, override, message):
    from jdr.config import ConfigError
    from jdr.train.trainer import train

    with pytest.raises(ConfigError, match=message):
        train(_train_cfg(tiny_model, toy_beir, override), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()
