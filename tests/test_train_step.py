"""The pmapped train step equals one device holding the global batch; optimizer, schedule, accumulation, guards."""

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
from jdr.train.optim import decay_mask, make_optimizer, make_schedule
from jdr.train.state import TrainState
from jdr.train.step import check_finite, make_train_step, pmap_train_step, replicate, unreplicate

N_DEV = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(params, encode_fn) of a tiny random BERT (hidden 32, 2 layers) read through jdr.models.hf.load."""
    # One layer keeps the compile short on shared CPUs; the collectives under test do not depend on depth.
    path = write_tiny_model(
        tmp_path_factory.mktemp("tiny") / "bert", hidden_size=16, num_layers=1, intermediate_size=32
    )
    params, spec, _ = hf.load(path)

    def encode_fn(params, ids, mask, tower, deterministic, rng):
        return enc.encode(params, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    return params, encode_fn


def bag_encode(params, ids, mask, tower, deterministic, rng):
    """A cheap stand-in encoder (embedding bag with optional dropout) for tests about the step, not the model."""
    x = params["emb"][ids] * mask[..., None]
    if not deterministic:
        x = x * jax.random.bernoulli(rng, 0.5, x.shape) * 2.0
    return x.sum(1) / mask.sum(1, keepdims=True)


BAG_PARAMS = {"emb": jax.random.normal(jax.random.key(0), (60, 8)), "bias": jnp.zeros((8,))}


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


# An "optimizer" whose state is the (pmean'd) gradient it was given and whose update is zero: it lets the test
# read exactly the gradient the step applies.
GRAD_PROBE = optax.GradientTransformation(
    init=lambda p: jax.tree.map(jnp.zeros_like, p),
    update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g),
)


@pytest.mark.parametrize("loss_name,loss_kwargs", [("info_nce", {"temperature": 0.05}), ("triplet", {"margin": 0.5})])
def test_pmap_step_equals_single_device_global_batch(tiny, loss_name, loss_kwargs):
    params, encode_fn = tiny
    group_size, per_device = 2, 2
    batch = _batch(0, N_DEV * per_device, group_size)
    step = make_train_step(encode_fn, loss_name=loss_name, loss_kwargs=loss_kwargs, tx=GRAD_PROBE, dropout=False)
    state = replicate(TrainState.create(params, GRAD_PROBE))
    new_state, metrics = pmap_train_step(step)(state, _shard(batch, N_DEV), jax.random.key(0))
    pmap_grads = unreplicate(new_state.opt_state)

    def full_loss(p):
        q = encode_fn(p, batch["query_ids"], batch["query_mask"], "query", True, None)
        ps = encode_fn(p, batch["passage_ids"], batch["passage_mask"], "passage", True, None)
        return losses.CONTRASTIVE[loss_name](q, ps, group_size=group_size, **loss_kwargs)[0]

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(full_loss))(params)
    np.testing.assert_allclose(np.asarray(metrics["loss"]), float(ref_loss), rtol=1e-5)
    assert float(ref_loss) > 0.0
    # Per-element rtol, with an atol tied to the largest gradient anywhere: some leaves (attention key biases)
    # have a mathematically zero gradient that both sides compute as ~1e-12 noise.
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    for path, ref in jax.tree_util.tree_leaves_with_path(ref_grads):
        got = functools.reduce(lambda t, k: t[k.key], path, pmap_grads)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    assert float(optax.tree.norm(ref_grads)) > 0.0
    np.testing.assert_allclose(np.asarray(metrics["grad_norm"]), float(optax.tree.norm(ref_grads)), rtol=1e-5)


def test_pmapped_step_with_donated_state_runs_twice_and_logs_lr():
    params, encode_fn = BAG_PARAMS, bag_encode
    tx, lr_at = make_optimizer(lr=1e-3, total_steps=10, warmup_steps=4)
    step = pmap_train_step(
        make_train_step(encode_fn, loss_name="info_nce", loss_kwargs={"temperature": 0.05}, tx=tx, lr_at=lr_at)
    )
    state = replicate(TrainState.create(params, tx))
    # replicate() must place arrays exactly as pmap returns them, else the 2nd call compiles the step again.
    placed = [x.sharding for x in jax.tree.leaves(state)]
    rng = jax.random.key(1)
    lrs = []
    for i in range(2):
        state, metrics = step(state, _shard(_batch(i, N_DEV, 2), N_DEV), rng)
        check_finite(i + 1, metrics["loss"])
        lrs.append(float(metrics["lr"][0]))
    assert int(unreplicate(state).step) == 2
    assert [x.sharding for x in jax.tree.leaves(state)] == placed
    np.testing.assert_allclose(lrs, [0.0, 2.5e-4], rtol=1e-6)
    assert set(metrics) >= {"loss", "accuracy", "pos_score", "neg_score", "grad_norm", "lr"}


class CountLowerings:
    """Counts jaxpr -> MLIR lowerings (one per jit/pmap cache miss, persistent compilation cache or not)."""

    EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        self.count += event == self.EVENT

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def test_replicated_state_compiles_the_pmapped_step_once():
    """replicate() places state exactly as pmap returns it: the second (and third) call reuse the first compile."""
    tx = optax.adamw(1e-3)
    step = pmap_train_step(make_train_step(bag_encode, loss_name="info_nce", loss_kwargs={"temperature": 0.05}, tx=tx))
    state = replicate(TrainState.create(BAG_PARAMS, tx))
    leaf = state.params["emb"]
    assert leaf.shape == (N_DEV, *BAG_PARAMS["emb"].shape) and isinstance(leaf.sharding, jax.sharding.NamedSharding)
    assert all(np.array_equal(np.asarray(s.data)[0], BAG_PARAMS["emb"]) for s in leaf.addressable_shards)
    rng = jax.random.key(0)
    with CountLowerings() as first:
        state, _ = step(state, _shard(_batch(0, N_DEV, 2), N_DEV), rng)
    with CountLowerings() as later:
        for i in (1, 2):
            state, metrics = step(state, _shard(_batch(i, N_DEV, 2), N_DEV), rng)
        jax.block_until_ready(metrics)
    assert first.count >= 1 and later.count == 0


def test_per_device_step_under_shard_map_equals_pmap(tiny):
    """The module docstring's claim: the same per-device step (dropout on, cross-device negatives) runs under
    `jax.shard_map(check_vma=False)` over a Mesh axis and under `jax.pmap`, with equal parameters after two steps."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    params, encode_fn = tiny
    tx = optax.sgd(0.5)  # linear in the gradient (Adam would blow float noise in ~0 gradients up to lr)
    step = make_train_step(encode_fn, loss_name="info_nce", loss_kwargs={"temperature": 0.05}, tx=tx)
    batches = [_batch(i, N_DEV * 2, 2) for i in range(2)]
    rng = jax.random.key(7)

    pmapped = pmap_train_step(step)
    p_state = replicate(TrainState.create(params, tx))
    for b in batches:
        p_state, p_metrics = pmapped(p_state, _shard(b, N_DEV), rng)

    mesh = Mesh(np.asarray(jax.local_devices()), ("batch",))
    sharded = jax.jit(
        jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch"), P()), out_specs=(P(), P()), check_vma=False)
    )
    s_state = TrainState.create(params, tx)
    for b in batches:
        s_state, s_metrics = sharded(s_state, b, rng)

    assert float(s_metrics["loss"]) == float(p_metrics["loss"][0])
    moved = False
    for (path, got), want, start in zip(
        jax.tree_util.tree_leaves_with_path(s_state.params),
        jax.tree.leaves(unreplicate(p_state.params)),
        jax.tree.leaves(params),
    ):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
        moved |= not np.allclose(want, start)
    assert moved


def test_train_step_reduces_loss_on_toy_problem():
    """Positives share the query's tokens: a few AdamW steps must raise the positive's score over the negatives."""
    params, encode_fn = BAG_PARAMS, bag_encode
    batch = _batch(3, 4, 2, lq=8, lp=8)
    pos = np.arange(4) * 2
    batch["passage_ids"][pos], batch["passage_mask"][pos] = batch["query_ids"], batch["query_mask"]
    tx, _ = make_optimizer(lr=0.1, total_steps=20, warmup_steps=0, schedule="constant")
    step = jax.pmap(
        make_train_step(encode_fn, loss_name="info_nce", loss_kwargs={"temperature": 0.1}, tx=tx, dropout=False),
        axis_name="batch",
        in_axes=(0, 0, None),
        devices=jax.local_devices()[:1],
    )
    state = replicate(TrainState.create(params, tx), jax.local_devices()[:1])
    shard = _shard(batch, 1)
    rng = jax.random.key(2)
    history = []
    for _ in range(8):
        state, metrics = step(state, shard, rng)
        history.append(float(metrics["loss"][0]))
    assert history[-1] < 0.5 * history[0], history


def test_dropout_keys_differ_per_step():
    """With dropout on, the same state and batch at two steps give different losses (keys fold in the step)."""

    params, tx = BAG_PARAMS, optax.sgd(0.0)
    step = jax.pmap(
        make_train_step(bag_encode, loss_name="info_nce", loss_kwargs={"temperature": 1.0}, tx=tx),
        axis_name="batch",
        in_axes=(0, 0, None),
        devices=jax.local_devices()[:1],
    )
    state = replicate(TrainState.create(params, tx), jax.local_devices()[:1])
    shard = _shard(_batch(4, 4, 2), 1)
    rng = jax.random.key(5)
    state, m1 = step(state, shard, rng)
    _, m2 = step(state, shard, rng)
    assert float(m1["loss"][0]) != float(m2["loss"][0])


def test_check_finite_names_the_step():
    check_finite(3, jnp.array([1.0, 2.0]))
    with pytest.raises(FloatingPointError, match="at step 17"):
        check_finite(17, jnp.array([1.0, jnp.nan]))
    with pytest.raises(FloatingPointError, match="at step 2"):
        check_finite(2, jnp.inf)


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="train.loss"):
        make_train_step(lambda *a: None, loss_name="infonce", loss_kwargs={}, tx=optax.sgd(1.0))


def test_decay_mask_skips_biases_and_layernorm(tiny):
    params, _ = tiny
    mask = decay_mask(params)
    decayed = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
    skipped = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if not m}
    assert any("word_embeddings" in k for k in decayed)
    assert any("query" in k and "kernel" in k for k in decayed)
    assert not any("LayerNorm" in k or k.endswith("['bias']") for k in decayed)
    assert any("['embeddings']['LayerNorm']" in k for k in skipped)
    # The optimizer really applies it: with zero gradients only decayed leaves move.
    tx, _ = make_optimizer(lr=0.1, total_steps=1, weight_decay=0.5, schedule="constant", grad_clip_norm=0.0)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    leaves = zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(mask))
    for (path, u), m in leaves:
        assert bool(jnp.any(u != 0)) == m, jax.tree_util.keystr(path)


def test_schedules():
    lin = make_schedule(lr=1.0, warmup_steps=10, total_steps=30, schedule="linear")
    np.testing.assert_allclose([lin(0), lin(5), lin(10), lin(20), lin(30)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    cos = make_schedule(lr=1.0, warmup_steps=10, total_steps=30, schedule="cosine")
    np.testing.assert_allclose([cos(5), cos(10), cos(20), cos(30)], [0.5, 1.0, 0.5, 0.0], atol=1e-6)
    const = make_schedule(lr=2.0, warmup_steps=4, total_steps=30, schedule="constant")
    np.testing.assert_allclose([const(2), const(4), const(29)], [1.0, 2.0, 2.0], atol=1e-6)
    _, lr_at = make_optimizer(lr=1.0, total_steps=30, warmup_steps=10, grad_accum_steps=4)
    np.testing.assert_allclose([lr_at(19), lr_at(20)], [0.4, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="train.schedule"):
        make_schedule(lr=1.0, warmup_steps=0, total_steps=3, schedule="step")


def test_multisteps_accumulation_equals_big_batch():
    """k micro-batches through MultiSteps == one update on the concatenated batch (linear model, clipping on)."""
    r = np.random.default_rng(0)
    x, y = r.normal(size=(16, 5)).astype(np.float32), r.normal(size=(16,)).astype(np.float32)
    params = {"w": jnp.asarray(r.normal(size=(5,)), jnp.float32), "bias": jnp.zeros(())}

    def loss(p, xb, yb):
        return jnp.mean((xb @ p["w"] + p["bias"] - yb) ** 2)

    kw = dict(lr=0.1, total_steps=4, warmup_steps=0, weight_decay=0.1, grad_clip_norm=0.5)
    big_tx, _ = make_optimizer(**kw)
    acc_tx, _ = make_optimizer(**kw, grad_accum_steps=4)

    def update(tx):
        @jax.jit
        def run(p, s, xb, yb):
            u, s = tx.update(jax.grad(loss)(p, xb, yb), s, p)
            return optax.apply_updates(p, u), s

        return run

    big_update, acc_update = update(big_tx), update(acc_tx)
    big, big_state = params, big_tx.init(params)
    acc, acc_state = params, acc_tx.init(params)
    for _ in range(2):
        big, big_state = big_update(big, big_state, x, y)
        for i in range(4):
            acc, acc_state = acc_update(acc, acc_state, x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4])
    for k in params:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-5, atol=1e-7)
    assert not np.allclose(big["w"], params["w"])
