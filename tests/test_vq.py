"""Distill-VQ: straight-through layer, faiss init round trip, export == faiss search, distillation, pmap step."""

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdr.index.faiss_index import load_index
from jdr.train.state import TrainState
from jdr.vq.config import vq_config
from jdr.vq.export import _check_codes, export_faiss, save_faiss, stored_codes
from jdr.vq.init import init_from_faiss
from jdr.vq.layer import VQIndex, VQSpec, decode, encode, quantize, rotate, soft_reconstruct
from jdr.vq.train import make_vq_train_step, spec_from_config, teacher_candidates, teacher_recall, train_distill_vq

D, N = 16, 512
VARIANTS = [
    VQSpec(D, 4, 16, 0, False),
    VQSpec(D, 4, 16, 0, True),
    VQSpec(D, 4, 16, 8, False),
    VQSpec(D, 4, 16, 8, True),
]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((N, D)).astype(np.float32)
    # Queries from a random 3-d subspace: the teacher's ranking cares about some directions more than others,
    # which is what distillation can exploit and plain k-means (L2 on documents) cannot.
    queries = (rng.standard_normal((400, 3)) @ rng.standard_normal((3, D))).astype(np.float32)
    return docs, queries


@pytest.fixture(scope="module")
def inits(data):
    return {spec: init_from_faiss(data[0], spec) for spec in VARIANTS}


def _set_nprobe(index, nlist):
    if nlist:
        faiss.extract_index_ivf(index).nprobe = nlist


def _assert_faiss_matches_jdr(vq, docs, queries, f_scores, f_rows):
    """faiss's (scores, ids) equal jdr's own ADC scores (rotated query · hard decoding of the codes) and top-k.
    Documents with identical codes tie exactly; the two sorts may order a tie differently, nothing else."""
    x_rot = rotate(jnp.asarray(docs), vq.rotation)
    rec = decode(vq.params, encode(vq.params, x_rot, vq.lists), vq.lists)
    full = np.asarray(rotate(jnp.asarray(queries), vq.rotation) @ rec.T)
    j_rows = np.argsort(-full, axis=1, kind="stable")[:, : f_rows.shape[1]]
    np.testing.assert_allclose(np.take_along_axis(full, f_rows, 1), f_scores, atol=1e-4)  # same score per id
    np.testing.assert_allclose(np.take_along_axis(full, j_rows, 1), f_scores, atol=1e-4)  # same top-k scores
    differ = j_rows != f_rows
    tied = np.abs(np.take_along_axis(full, j_rows, 1) - np.take_along_axis(full, f_rows, 1)) < 1e-5
    assert np.all(tied[differ]) and differ.mean() < 0.02, f"{differ.sum()} ids differ"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d=16, M=5), "not divisible by M=5"),
        (dict(d=16, M=4, K=512), "K=512 must be a power of two in \\[2, 256\\]"),
        (dict(d=16, M=4, K=24), "K=24 must be a power of two"),
        (dict(d=16, M=4, nlist=-1), "nlist=-1"),
    ],
)
def test_spec_errors_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        VQSpec(**kwargs)
    assert "\n" not in str(e.value)


def test_shape_errors_are_one_line(data, inits):
    docs, _ = data
    vq, _ = inits[VARIANTS[0]]
    with pytest.raises(ValueError, match="doc_emb shape \\(10, 16\\)") as e:
        export_faiss(vq, docs[:10])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="expected a \\[N, 8\\]"):
        init_from_faiss(docs, VQSpec(8, 4, 16))
    cfg = vq_config()
    cfg.vq.M = 5
    with pytest.raises(ValueError, match="not divisible"):
        spec_from_config(cfg, 16)


def _random_params(rng, spec):
    p = {"codebooks": jnp.asarray(rng.standard_normal((spec.M, spec.K, spec.dsub)), jnp.float32)}
    if spec.nlist:
        p["centroids"] = jnp.asarray(rng.standard_normal((spec.nlist, spec.d)), jnp.float32)
    return p


def test_ste_forward_is_hard_and_gradient_is_soft_path():
    rng = np.random.default_rng(1)
    spec = VQSpec(D, 4, 16, 8)
    params = _random_params(rng, spec)
    x = jnp.asarray(rng.standard_normal((32, D)), jnp.float32)
    lists = jnp.asarray(rng.integers(0, 8, 32), jnp.int32)
    w = jnp.asarray(rng.standard_normal((32, D)), jnp.float32)
    tau = 2.0
    rec, codes = jax.jit(quantize, static_argnums=3)(params, x, lists, tau)
    np.testing.assert_allclose(rec, decode(params, codes, lists), atol=1e-6)  # forward = hard, for any tau
    np.testing.assert_array_equal(codes, encode(params, x, lists))

    # A linear read-out, so the gradient does not depend on where (hard or soft point) it is evaluated.
    def ste(p, x):
        return jnp.sum(w * quantize(p, x, lists, tau)[0])

    def soft(p, x):
        return jnp.sum(w * soft_reconstruct(p, x, lists, tau))

    gp_ste, gx_ste = jax.jit(jax.grad(ste, (0, 1)))(params, x)
    gp_soft, gx_soft = jax.jit(jax.grad(soft, (0, 1)))(params, x)
    assert float(jnp.abs(gx_ste).max()) > 1e-3 and float(jnp.abs(gp_ste["codebooks"]).max()) > 1e-3
    np.testing.assert_allclose(gx_ste, gx_soft, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gp_ste["centroids"], gp_soft["centroids"], rtol=1e-4, atol=1e-5)
    # A hard reconstruction alone gives no gradient to the input at all: the soft path is what carries it.
    hard = jax.jit(jax.grad(lambda x: jnp.sum(w * decode(params, encode(params, x, lists), lists))))(x)
    assert float(jnp.abs(hard).max()) == 0


def test_small_tau_soft_reconstruction_is_hard_decoding():
    rng = np.random.default_rng(2)
    spec = VQSpec(D, 4, 16, 8)
    params = _random_params(rng, spec)
    x = jnp.asarray(rng.standard_normal((64, D)), jnp.float32)
    lists = jnp.asarray(rng.integers(0, 8, 64), jnp.int32)
    hard = jax.jit(lambda p, x: decode(p, encode(p, x, lists), lists))(params, x)
    soft = jax.jit(soft_reconstruct, static_argnums=3)
    np.testing.assert_allclose(soft(params, x, lists, 1e-4), hard, atol=1e-5)
    assert float(jnp.abs(soft(params, x, lists, 10.0) - hard).max()) > 0.1  # and tau matters


@pytest.mark.parametrize("spec", VARIANTS, ids=lambda s: s.factory())
def test_init_reproduces_faiss(data, inits, spec):
    docs, queries = data
    vq, index = inits[spec]
    inner = faiss.downcast_index(index.index) if spec.opq else index
    x_rot = np.ascontiguousarray(rotate(docs, vq.rotation))
    faiss_rec = inner.sa_decode(inner.sa_encode(x_rot))
    codes = encode(vq.params, x_rot, vq.lists)
    np.testing.assert_allclose(decode(vq.params, codes, vq.lists), faiss_rec, atol=1e-5)
    np.testing.assert_array_equal(codes, stored_codes(faiss.downcast_index(inner), spec.M, spec.nbits))
    # Scores of faiss's own index (its own list assignment at add time) equal jdr's ADC scores at init.
    _set_nprobe(index, spec.nlist)
    _assert_faiss_matches_jdr(vq, docs, queries[:50], *index.search(queries[:50], 10))


@pytest.mark.parametrize("spec", VARIANTS, ids=lambda s: s.factory())
def test_export_equals_faiss_search(data, inits, spec, tmp_path):
    docs, queries = data
    vq0, _ = inits[spec]
    # Move centroids and codebooks as training would: documents now sit in lists that are no longer their
    # nearest centroid, which export must respect (add_core with the kept lists).
    rng = np.random.default_rng(3)
    params = {k: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in vq0.params.items()}
    vq = VQIndex(spec, params, vq0.rotation, vq0.lists)
    index = save_faiss(vq, docs, tmp_path / "vq.faiss")
    for idx in (index, load_index(tmp_path / "vq.faiss")):
        assert idx.ntotal == N and idx.is_trained
        assert isinstance(idx, faiss.IndexPreTransform) == spec.opq
        _set_nprobe(idx, spec.nlist)
        _assert_faiss_matches_jdr(vq, docs, queries[:64], *idx.search(queries[:64], 20))
    if spec.nlist:
        ivf = faiss.extract_index_ivf(index)
        moved = ivf.quantizer.assign(np.ascontiguousarray(rotate(docs, vq.rotation)), 1)[:, 0]
        assert np.any(moved != vq.lists)  # the test really exercises kept (non-nearest) lists


@pytest.mark.parametrize("spec", [VARIANTS[1], VARIANTS[3]], ids=lambda s: s.factory())
def test_export_code_check_allows_only_float_ties(data, inits, spec):
    """The export check accepts a code faiss chose differently only when both codewords are equally near
    (a float tie); a genuinely different code is an error naming the count."""
    docs, _ = data
    vq0, _ = inits[spec]
    x_rot = np.asarray(rotate(jnp.asarray(docs), vq0.rotation))
    ours = np.asarray(encode(vq0.params, x_rot, vq0.lists))
    _check_codes(vq0, x_rot, ours)
    # A tie: codeword k2 duplicates document 0's codeword in sub-space 1, and "faiss" picked the duplicate.
    k1 = int(ours[0, 1])
    k2 = (k1 + 1) % spec.K
    books = np.array(vq0.params["codebooks"])
    books[1, k2] = books[1, k1]
    tied = VQIndex(spec, {**vq0.params, "codebooks": books}, vq0.rotation, vq0.lists)
    theirs = np.asarray(encode(tied.params, x_rot, tied.lists)).copy()
    theirs[0, 1] = k2 if theirs[0, 1] == k1 else k1
    _check_codes(tied, x_rot, theirs)
    # Not a tie: the farthest codeword of sub-space 0 for document 3.
    wrong = ours.copy()
    r = x_rot[3, : spec.d // spec.M] - (
        np.asarray(vq0.params["centroids"])[vq0.lists[3], : spec.d // spec.M] if spec.nlist else 0
    )
    wrong[3, 0] = int(np.argmax(np.sum((np.asarray(vq0.params["codebooks"])[0] - r) ** 2, axis=1)))
    with pytest.raises(AssertionError, match="1/512 documents differently"):
        _check_codes(vq0, x_rot, wrong)


def _cfg(nlist, opq, **train):
    cfg = vq_config()
    cfg.vq.M, cfg.vq.K, cfg.vq.nlist, cfg.vq.opq = 4, 16, nlist, opq
    cfg.train.update(dict(steps=150, batch_size=16, topk=20, lr=1e-2, tau=0.1, loss_temperature=4.0))
    cfg.train.update(train)
    return cfg


def test_distillation_learns_and_beats_faiss_init(data, inits):
    docs, queries = data
    train_q, test_q = queries[:300], queries[300:]
    spec = VARIANTS[2]  # IVF8,PQ4x4
    vq0, _ = inits[spec]
    vq, history, _, _ = train_distill_vq(docs, train_q, _cfg(8, False), init=vq0)
    loss = [h["loss"] for h in history]
    assert np.mean(loss[-20:]) < np.mean(loss[:20]) - 0.1
    teacher = teacher_candidates(docs, test_q, 10)
    recalls = []
    for v in (vq0, vq):
        index = export_faiss(v, docs)
        _set_nprobe(index, 8)
        recalls.append(teacher_recall(index.search(test_q, 10)[1], teacher, 10))
    assert recalls[1] >= recalls[0] + 0.05, recalls  # measured 0.43 -> 0.6


@pytest.mark.parametrize("loss", ["kl_distill", "mse_scores", "margin_mse"])
def test_other_losses_and_supervised_term_run(data, inits, loss):
    docs, queries = data
    positives = [[int(r)] for r in teacher_candidates(docs, queries[:64], 1)[:, 0]]
    cfg = _cfg(8, False, steps=5, loss=loss, sup_weight=0.5)
    history = train_distill_vq(docs, queries[:64], cfg, init=inits[VARIANTS[2]][0], positives=positives).history
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["sup_loss"]) for h in history)
    with pytest.raises(ValueError, match="needs `positives`"):
        train_distill_vq(docs, queries[:64], cfg, init=inits[VARIANTS[2]][0])


def test_pmap_step_equals_single_device_step(data, inits):
    """2 devices holding half the batch each, candidates all-gathered == one device holding the whole batch."""
    docs, queries = data
    vq, _ = inits[VARIANTS[3]]  # OPQ + IVF
    cfg = _cfg(8, True)
    tx = optax.adam(1e-2)
    rows = teacher_candidates(docs, queries[:8], 5)
    batch = {"query_emb": queries[:8], "doc_emb": docs[rows], "lists": vq.lists[rows]}
    frozen = {"rotation": jnp.asarray(vq.rotation)}
    state = TrainState.create(jax.tree.map(jnp.asarray, vq.params), tx)
    one, m1 = jax.jit(make_vq_train_step(cfg, tx, tau_scale=1.0))(state, batch, frozen)
    step = jax.pmap(
        make_vq_train_step(cfg, tx, tau_scale=1.0, axis_name="batch"),
        axis_name="batch",
        in_axes=(0, 0, None),
        devices=jax.devices()[:2],
    )
    rep = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    split = jax.tree.map(lambda a: a.reshape((2, a.shape[0] // 2) + a.shape[1:]), batch)
    two, m2 = step(rep, split, frozen)
    np.testing.assert_allclose(m2["loss"][0], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(b[0], a, atol=1e-5)
        np.testing.assert_allclose(b[1], a, atol=1e-5)


def test_query_tower_trains_with_the_index(tiny_model):
    """Distill-VQ + query encoder: with encoder_lr 0 it is index-only Distill-VQ on the teacher's own query
    embeddings; with a real rate the tower moves and the loss falls."""
    from jdr.models.testing import DEFAULT_WORDS
    from jdr.vq.query_tower import QueryTower

    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(DEFAULT_WORDS, rng.integers(3, 10))) for _ in range(600)]
    tower = QueryTower.load(tiny_model, max_length=16)
    docs = tower.embed(texts[:480])
    queries, q_texts = tower.embed(texts[480:]), texts[480:]
    spec = VQSpec(docs.shape[1], 4, 16, 0, False)
    vq0, _ = init_from_faiss(docs, spec)

    def run(encoder_lr, steps=40):
        cfg = _cfg(0, False, steps=steps, encoder_lr=encoder_lr)
        return train_distill_vq(docs, queries, cfg, init=vq0, query_tower=tower, query_texts=q_texts)

    frozen = run(0.0, steps=5)
    index_only = train_distill_vq(docs, queries, _cfg(0, False, steps=5), init=vq0)
    for a, b in zip(jax.tree.leaves(frozen.query_tower.params), jax.tree.leaves(tower.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose([h["loss"] for h in frozen.history], [h["loss"] for h in index_only.history], rtol=1e-4)

    trained = run(1e-3)
    loss = [h["loss"] for h in trained.history]
    assert np.mean(loss[-5:]) < np.mean(loss[:5])
    moved = trained.query_tower.embed(q_texts[:8])
    assert not np.allclose(moved, queries[:8], atol=1e-3)
    with pytest.raises(ValueError, match="one text per training query"):
        train_distill_vq(docs, queries, _cfg(0, False, steps=1), init=vq0, query_tower=tower, query_texts=q_texts[:3])
