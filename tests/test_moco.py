"""MoCo (jdr.train.objectives.moco): queue FIFO order, no gradient through keys, the momentum update,
8 devices == 1 device, and exact resume through the orbax Checkpointer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_step import GRAD_PROBE, N_DEV, _batch, _shard, bag_encode

from jdr import losses
from jdr.checkpoint import Checkpointer
from jdr.models import encoder as enc
from jdr.models import hf
from jdr.models.testing import write_tiny_model
from jdr.train.objectives.moco import MocoState, make_moco_train_step
from jdr.train.optim import make_optimizer
from jdr.train.step import pmap_train_step, replicate, unreplicate

PARAMS = {"shared": {"emb": jax.random.normal(jax.random.key(0), (60, 8))}}
INFO_NCE = {"loss_name": "info_nce", "loss_kwargs": {"temperature": 0.1}}


def tied_bag(params, ids, mask, tower, deterministic, rng):
    """The bag encoder of test_train_step over a tied `{"shared": ...}` tree, L2-normalised like MiniLM."""
    x = bag_encode(params["shared"], ids, mask, tower, deterministic, rng)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def one_device(step):
    return jax.pmap(step, axis_name="batch", in_axes=(0, 0, None), devices=jax.local_devices()[:1])


def test_queue_is_fifo_over_the_global_batch():
    b, g, k = 4, 2, 12  # queue of 3 global batches
    step = one_device(make_moco_train_step(tied_bag, tx=optax.sgd(0.1), momentum=0.5, dropout=False, **INFO_NCE))
    state = replicate(MocoState.create(PARAMS, optax.sgd(0.1), queue_size=k, dim=8), jax.local_devices()[:1])
    initial = np.asarray(unreplicate(state).queue)
    assert np.allclose(np.linalg.norm(initial, axis=1), 1.0)
    written = []
    for t in range(4):
        batch = _batch(10 + t, b, g)
        state, _ = step(state, _shard(batch, 1), jax.random.key(0))
        host = unreplicate(state)
        # The keys of step t come from the key tower as updated at step t (stored in the new state).
        keys = tied_bag(host.key_params, batch["passage_ids"], batch["passage_mask"], "passage", True, None)
        written.append(np.asarray(keys[::g]))
        queue = np.asarray(host.queue)
        assert int(host.queue_ptr) == (t + 1) * b % k
        np.testing.assert_allclose(queue[t * b % k : t * b % k + b], written[t], atol=1e-6)
        if t < 2:  # rows not yet written keep their initial values
            np.testing.assert_array_equal(queue[(t + 1) * b :], initial[(t + 1) * b :])
    # After 4 steps the 4th batch has overwritten the oldest (the 1st); the 2nd and 3rd remain, in order.
    np.testing.assert_allclose(queue, np.concatenate([written[3], written[1], written[2]]), atol=1e-6)


def test_keys_get_no_gradient_and_the_key_tower_is_an_ema():
    b, g = 4, 2
    batch = _batch(1, b, g)
    queue_state = MocoState.create(PARAMS, GRAD_PROBE, queue_size=8, dim=8, seed=3)
    # momentum 0: the key tower equals the query tower, so only stop_gradient separates the two loss variants.
    step = one_device(make_moco_train_step(tied_bag, tx=GRAD_PROBE, momentum=0.0, dropout=False, **INFO_NCE))
    new, _ = step(replicate(queue_state, jax.local_devices()[:1]), _shard(batch, 1), jax.random.key(0))
    got = unreplicate(new.opt_state)

    def loss(params, keys_from):
        q = tied_bag(params, batch["query_ids"], batch["query_mask"], "query", True, None)
        p = tied_bag(keys_from(params), batch["passage_ids"], batch["passage_mask"], "passage", True, None)
        return losses.info_nce(q, p, temperature=0.1, group_size=g, extra_negatives=queue_state.queue)[0]

    stopped = jax.grad(loss)(PARAMS, lambda p: jax.lax.stop_gradient(p))
    through = jax.grad(loss)(PARAMS, lambda p: p)
    np.testing.assert_allclose(got["shared"]["emb"], stopped["shared"]["emb"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(got["shared"]["emb"], through["shared"]["emb"], rtol=1e-3, atol=1e-5)

    # The EMA: the key tower moves toward the pre-update params by (1 - m), whatever the optimizer does.
    old = MocoState.create(PARAMS, optax.sgd(1.0), queue_size=8, dim=8)
    old = old.replace(key_params=jax.tree.map(lambda x: x + 1.0, old.key_params))
    step = one_device(make_moco_train_step(tied_bag, tx=optax.sgd(1.0), momentum=0.9, dropout=False, **INFO_NCE))
    new, _ = step(replicate(old, jax.local_devices()[:1]), _shard(batch, 1), jax.random.key(0))
    new = unreplicate(new)
    expected = 0.9 * (np.asarray(PARAMS["shared"]["emb"]) + 1.0) + 0.1 * np.asarray(PARAMS["shared"]["emb"])
    np.testing.assert_allclose(new.key_params["shared"]["emb"], expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(new.params["shared"]["emb"], PARAMS["shared"]["emb"])  # the query tower did train


def test_moco_rejects_bad_settings():
    with pytest.raises(ValueError, match="info_nce"):
        make_moco_train_step(tied_bag, loss_name="triplet", loss_kwargs={}, tx=GRAD_PROBE, momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        make_moco_train_step(tied_bag, tx=GRAD_PROBE, momentum=1.0, **INFO_NCE)
    step = one_device(make_moco_train_step(tied_bag, tx=GRAD_PROBE, momentum=0.9, dropout=False, **INFO_NCE))
    state = replicate(MocoState.create(PARAMS, GRAD_PROBE, queue_size=6, dim=8), jax.local_devices()[:1])
    with pytest.raises(ValueError, match="not a multiple of the global batch 4"):
        step(state, _shard(_batch(0, 4, 1), 1), jax.random.key(0))


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    path = write_tiny_model(
        tmp_path_factory.mktemp("moco") / "bert", hidden_size=16, num_layers=1, intermediate_size=32
    )
    params, spec, _ = hf.load(path)
    return params, functools.partial(_encode, spec=spec)


def _encode(params, ids, mask, tower, deterministic, rng, *, spec):
    return enc.encode(params, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)


def test_pmap_moco_step_equals_one_device_holding_the_global_batch(tiny_tied):
    params, encode_fn = tiny_tied
    per_device, g = 2, 2
    batch = _batch(0, N_DEV * per_device, g)
    state = MocoState.create(params, GRAD_PROBE, queue_size=4 * N_DEV * per_device, dim=16, seed=1)
    step = make_moco_train_step(encode_fn, tx=GRAD_PROBE, momentum=0.99, dropout=False, **INFO_NCE)
    many, m_many = pmap_train_step(step)(replicate(state), _shard(batch, N_DEV), jax.random.key(0))
    one, m_one = one_device(step)(replicate(state, jax.local_devices()[:1]), _shard(batch, 1), jax.random.key(0))
    many, one = unreplicate(many), unreplicate(one)
    for k in ("loss", "accuracy", "pos_score", "neg_score", "grad_norm"):
        np.testing.assert_allclose(np.asarray(m_many[k])[0], np.asarray(m_one[k])[0], rtol=1e-5, err_msg=k)
    assert float(np.asarray(m_one["loss"])[0]) > 0
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(one.opt_state))
    for path, ref in jax.tree_util.tree_leaves_with_path(one.opt_state):  # the gradients (GRAD_PROBE)
        got = functools.reduce(lambda t, k: t[k.key], path, many.opt_state)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(many.queue, one.queue, atol=1e-6)  # same keys, same global order
    assert int(many.queue_ptr) == int(one.queue_ptr) == N_DEV * per_device
    assert not np.allclose(many.queue[: N_DEV * per_device], np.asarray(state.queue)[: N_DEV * per_device])


def test_resume_through_the_checkpointer_is_bit_identical(tmp_path):
    tx, lr_at = make_optimizer(lr=1e-2, total_steps=6, warmup_steps=1)
    step = pmap_train_step(make_moco_train_step(tied_bag, tx=tx, lr_at=lr_at, momentum=0.9, **INFO_NCE))
    batches = [_shard(_batch(20 + t, N_DEV, 2), N_DEV) for t in range(4)]
    rng = jax.random.key(7)
    start = MocoState.create(PARAMS, tx, queue_size=2 * N_DEV, dim=8)

    straight = replicate(start)
    for t in range(4):
        straight, _ = step(straight, batches[t], rng)
    straight = unreplicate(straight)

    state = replicate(start)
    for t in range(2):
        state, _ = step(state, batches[t], rng)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, unreplicate(state), iterator_state={"epoch": 0, "position": 2}, rng=rng, config={})
    with Checkpointer(tmp_path) as fresh:  # a restarted process
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), start)
        restored, extras = fresh.restore(abstract_state=abstract)
    assert isinstance(restored, MocoState) and int(restored.queue_ptr) == 2 * N_DEV % (2 * N_DEV)
    state = replicate(restored)
    for t in range(2, 4):
        state, _ = step(state, batches[t], extras["rng"])
    resumed = unreplicate(state)
    assert jax.tree.structure(resumed) == jax.tree.structure(straight)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _examples(batch, docs, relevant):
    """Examples of one-passage groups from token arrays: query i's positive is document docs[i]."""
    from jdr.data.source import Example

    return [
        Example(
            batch["query_ids"][i][batch["query_mask"][i] > 0],
            (batch["passage_ids"][i][batch["passage_mask"][i] > 0],),
            f"q{i}",
            (docs[i],),
            frozenset(relevant[i]),
        )
        for i in range(len(docs))
    ]


def test_queue_rows_of_a_querys_relevant_documents_are_masked_and_counted():
    """Second epoch of the same 4 documents with a queue of 2 global batches: each query's own document (and a
    second relevant one for query 0) sits in the queue from step 1. Those rows leave the softmax and are counted in
    `queue_false_negatives`; the loss equals a hand-computed InfoNCE without them."""
    from jdr.data.batching import BatchBuilder
    from jdr.train.objectives.moco import DocIdBatches, doc_id_hash

    b = 4
    builder = BatchBuilder(
        query_max_length=6,
        passage_max_length=8,
        pad_token_id=0,
        local_device_count=1,
        pad_queries_to_max=True,
        pad_passages_to_max=True,
    )
    batches = DocIdBatches(builder)
    docs = ["d0", "d1", "d2", "d3"]
    relevant = [{"d0", "d2"}, {"d1"}, {"d2"}, {"d3"}]
    tokens = [_batch(30 + t, b, 1) for t in range(2)]
    step = one_device(make_moco_train_step(tied_bag, tx=GRAD_PROBE, momentum=0.0, dropout=False, **INFO_NCE))
    state = replicate(MocoState.create(PARAMS, GRAD_PROBE, queue_size=2 * b, dim=8), jax.local_devices()[:1])
    arrays = batches(_examples(tokens[0], docs, relevant))
    assert arrays["relevant_ids"].shape == (1, b, 2) and arrays["relevant_ids"][0, 1, 1] == -1
    assert list(arrays["positive_ids"][0]) == [doc_id_hash(d) for d in docs]
    state, m1 = step(state, arrays, jax.random.key(0))
    assert float(m1["queue_false_negatives"][0]) == 0.0  # the queue held only noise
    host = unreplicate(state)
    assert list(host.queue_ids) == [doc_id_hash(d) for d in docs] + [-1] * b

    arrays = batches(_examples(tokens[1], docs, relevant))
    _, m2 = step(state, arrays, jax.random.key(0))
    assert float(m2["queue_false_negatives"][0]) == 5.0  # 4 own documents + d2 for query 0
    # momentum 0, no update: both towers are PARAMS; queue rows 0..3 hold d0..d3.
    q = np.asarray(tied_bag(PARAMS, arrays["query_ids"][0], arrays["query_mask"][0], "query", True, None))
    k = np.asarray(tied_bag(PARAMS, arrays["passage_ids"][0], arrays["passage_mask"][0], "passage", True, None))
    scores = q @ np.concatenate([k, host.queue]).T / 0.1
    scores[np.arange(b), b + np.arange(b)] = -np.inf  # own document's queue row
    scores[0, [2, b + 2]] = -np.inf  # d2 is relevant to query 0: in the batch and in the queue
    assert float(m2["false_negatives"][0]) == 1.0  # the in-batch mask counts its own column only
    expected = np.mean(np.log(np.exp(scores).sum(1)) - scores[np.arange(b), np.arange(b)])
    np.testing.assert_allclose(float(m2["loss"][0]), expected, rtol=1e-5)
