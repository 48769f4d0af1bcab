"""jdr.losses against small numpy references; masking; zero gradients at the optimum; the all_gather path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdr import losses


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_info_nce(q, p, temperature, group_size):
    scores = q @ p.T
    labels = np.arange(q.shape[0]) * group_size
    logp = _np_log_softmax(scores / temperature)
    return -logp[np.arange(q.shape[0]), labels].mean(), scores, labels


def test_info_nce_matches_numpy():
    r = _rng()
    b, g, h = 4, 3, 8
    q, p = r.normal(size=(b, h)).astype(np.float32), r.normal(size=(b * g, h)).astype(np.float32)
    p[0] = q[0] * 3  # query 0 certainly ranks its positive first, query 1 certainly not
    p[1 * g] = -q[1] * 3
    loss, aux = losses.info_nce(q, p, temperature=0.5, group_size=g)
    ref, scores, labels = _np_info_nce(q.astype(np.float64), p.astype(np.float64), 0.5, g)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(aux["accuracy"], np.mean(scores.argmax(1) == labels), rtol=1e-6)
    is_pos = np.zeros_like(scores, bool)
    is_pos[np.arange(b), labels] = True
    np.testing.assert_allclose(aux["pos_score"], scores[is_pos].mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["neg_score"], scores[~is_pos].mean(), rtol=1e-4, atol=1e-6)
    assert 0.0 < float(aux["accuracy"]) < 1.0


def test_info_nce_bfloat16_inputs_are_computed_in_float32():
    r = _rng(1)
    q, p = r.normal(size=(2, 4)), r.normal(size=(4, 4))
    q16, p16 = jnp.asarray(q, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16)
    loss, _ = losses.info_nce(q16, p16, temperature=0.05, group_size=2)
    assert loss.dtype == jnp.float32


def test_info_nce_all_gather_over_named_axis_matches_global_batch():
    """vmap with an axis name runs the same collectives as pmap: per-shard losses average to the global loss."""
    r = _rng(2)
    d, b, g, h = 4, 2, 2, 6
    q = r.normal(size=(d * b, h)).astype(np.float32)
    p = r.normal(size=(d * b * g, h)).astype(np.float32)
    per_shard = jax.vmap(
        lambda qs, ps: losses.info_nce(qs, ps, temperature=0.3, group_size=g, axis_name="i")[0], axis_name="i"
    )(q.reshape(d, b, h), p.reshape(d, b * g, h))
    whole, _ = losses.info_nce(q, p, temperature=0.3, group_size=g)
    np.testing.assert_allclose(per_shard.mean(), whole, rtol=1e-5)
    # Without the gather each shard would see only its own passages: a different (smaller) loss.
    local = jax.vmap(lambda qs, ps: losses.info_nce(qs, ps, temperature=0.3, group_size=g)[0])(
        q.reshape(d, b, h), p.reshape(d, b * g, h)
    )
    assert abs(float(local.mean()) - float(whole)) > 1e-3


def test_info_nce_false_negative_mask_by_hand():
    """Two queries, one hard negative each (G = 2): columns [p0+, n0, p1+, n1]. Query 0's hard-negative column n1
    (drawn for query 1) is labelled relevant to query 0: masking removes exactly that term from its softmax."""
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 0.0]], np.float32)
    t = 0.5
    mask = np.zeros((2, 4), bool)
    mask[0, 3] = True
    mask[1, 2] = True  # its own positive: ignored, never dropped
    loss, aux = losses.info_nce(q, p, temperature=t, group_size=2, false_negatives=mask)
    s = q.astype(np.float64) @ p.T.astype(np.float64) / t
    by_hand_0 = -(s[0, 0] - np.log(np.exp(s[0, [0, 1, 2]]).sum()))  # column 3 left out
    by_hand_1 = -(s[1, 2] - np.log(np.exp(s[1]).sum()))
    np.testing.assert_allclose(loss, (by_hand_0 + by_hand_1) / 2, rtol=1e-6)
    assert float(aux["false_negatives"]) == 1.0
    unmasked, aux0 = losses.info_nce(q, p, temperature=t, group_size=2)
    assert float(aux0["false_negatives"]) == 0.0
    assert float(unmasked) > float(loss) + 0.5  # n1 scores 2.0 with query 0: the unmasked loss punishes a positive
    grads = jax.grad(lambda p_: losses.info_nce(q, p_, temperature=t, group_size=2, false_negatives=mask)[0])(p)
    assert np.isfinite(np.asarray(grads)).all()
    # n1 gets gradient only from query 1 (q1 = e2): nothing along q0 = e1 flows through the masked pair
    assert float(np.asarray(grads)[3, 0]) == 0.0 and float(np.asarray(grads)[3, 1]) > 0.0
    with pytest.raises(ValueError, match="false_negatives mask"):
        losses.info_nce(q, p, temperature=t, group_size=2, false_negatives=mask[:, :3])


def test_info_nce_false_negative_mask_follows_all_gather():
    """Under a named axis the mask spans the gathered columns; per-shard losses average to the masked global loss."""
    r = _rng(5)
    d, b, g, h = 2, 2, 2, 4
    q = r.normal(size=(d * b, h)).astype(np.float32)
    p = r.normal(size=(d * b * g, h)).astype(np.float32)
    mask = r.random((d * b, d * b * g)) < 0.3
    per_shard, aux = jax.vmap(
        lambda qs, ps, ms: losses.info_nce(qs, ps, temperature=0.3, group_size=g, axis_name="i", false_negatives=ms),
        axis_name="i",
    )(q.reshape(d, b, h), p.reshape(d, b * g, h), mask.reshape(d, b, d * b * g))
    whole, aux_whole = losses.info_nce(q, p, temperature=0.3, group_size=g, false_negatives=mask)
    np.testing.assert_allclose(per_shard.mean(), whole, rtol=1e-5)
    np.testing.assert_allclose(aux["false_negatives"], float(aux_whole["false_negatives"]))  # psummed: global count


def test_info_nce_extra_negatives_are_appended_without_gradient():
    r = _rng(6)
    q, p = r.normal(size=(3, 4)).astype(np.float32), r.normal(size=(6, 4)).astype(np.float32)
    queue = r.normal(size=(5, 4)).astype(np.float32)
    loss, _ = losses.info_nce(q, p, temperature=0.2, group_size=2, extra_negatives=queue)
    s = np.concatenate([q @ p.T, q @ queue.T], 1).astype(np.float64) / 0.2
    labels = np.arange(3) * 2
    ref = -(_np_log_softmax(s)[np.arange(3), labels]).mean()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    g = jax.grad(lambda k: losses.info_nce(q, p, temperature=0.2, group_size=2, extra_negatives=k)[0])(queue)
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_triplet_matches_numpy():
    r = _rng(3)
    b, g, h = 3, 4, 5
    q, p = r.normal(size=(b, h)).astype(np.float32), r.normal(size=(b * g, h)).astype(np.float32)
    loss, aux = losses.triplet_margin(q, p, group_size=g, margin=0.7)
    s = np.einsum("bh,bgh->bg", q, p.reshape(b, g, h))
    hinge = np.maximum(0.0, 0.7 - s[:, :1] + s[:, 1:])
    np.testing.assert_allclose(loss, hinge.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["active"], (hinge > 0).mean())
    np.testing.assert_allclose(aux["accuracy"], np.all(s[:, :1] > s[:, 1:], axis=1).mean())


def test_contrastive_shape_errors():
    q, p = np.zeros((2, 4), np.float32), np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="p\\[B\\*G,H\\]"):
        losses.info_nce(q, p, temperature=0.1, group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        losses.triplet_margin(q, np.zeros((2, 4), np.float32), group_size=1, margin=1.0)


def _lists(seed=4, b=3, c=5):
    r = _rng(seed)
    return r.normal(size=(b, c)).astype(np.float32), r.normal(size=(b, c)).astype(np.float32)


def test_listnet_and_kl_match_numpy():
    s, t = _lists()
    tau = 2.0
    pt = np.exp(_np_log_softmax(t / tau))
    ce = -(pt * _np_log_softmax(s / tau)).sum(1).mean()
    kl = (pt * (np.log(pt) - _np_log_softmax(s / tau))).sum(1).mean()
    np.testing.assert_allclose(losses.listnet(s, t, temperature=tau)[0], ce, rtol=1e-5)
    np.testing.assert_allclose(losses.kl_distill(s, t, temperature=tau)[0], kl, rtol=1e-5)


@pytest.mark.parametrize("fn", [losses.listnet, losses.kl_distill, losses.mse_scores, losses.margin_mse])
def test_distillation_zero_gradient_when_student_equals_teacher(fn):
    _, t = _lists(5)
    grad = jax.grad(lambda s: fn(s, t)[0])(jnp.asarray(t))
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    moved = jax.grad(lambda s: fn(s, t)[0])(jnp.asarray(t) + jnp.eye(3, 5))
    assert float(jnp.abs(moved).max()) > 1e-3  # the test can fail: away from the optimum there is a gradient


def test_kl_is_zero_when_equal_and_aux_agreement():
    s, _ = _lists(6)
    loss, aux = losses.kl_distill(s, s)
    assert abs(float(loss)) < 1e-6
    assert float(aux["top1_agreement"]) == 1.0


@pytest.mark.parametrize("fn", [losses.listnet, losses.kl_distill, losses.mse_scores, losses.margin_mse])
def test_mask_equals_truncated_lists(fn):
    """Padded candidates (any value) change neither loss nor gradient: equal to the unpadded lists."""
    s, t = _lists(7, b=2, c=6)
    mask = np.ones_like(s, bool)
    mask[:, 4:] = False
    s_pad, t_pad = s.copy(), t.copy()
    s_pad[:, 4:], t_pad[:, 4:] = 50.0, -50.0
    masked, _ = fn(s_pad, t_pad, mask=mask)
    truncated, _ = fn(s[:, :4], t[:, :4])
    np.testing.assert_allclose(masked, truncated, rtol=1e-5)
    grad = jax.grad(lambda x: fn(x, t_pad, mask=mask)[0])(jnp.asarray(s_pad))
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 4:] == 0.0)
    unmasked, _ = fn(s_pad, t_pad)
    assert abs(float(unmasked) - float(truncated)) > 1e-3


def test_mse_and_margin_mse_match_numpy():
    s, t = _lists(8)
    np.testing.assert_allclose(losses.mse_scores(s, t)[0], ((s - t) ** 2).mean(), rtol=1e-5)
    ref = (((s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])) ** 2).mean()
    np.testing.assert_allclose(losses.margin_mse(s, t)[0], ref, rtol=1e-5)


def test_distillation_shape_errors():
    s, t = _lists()
    with pytest.raises(ValueError, match="student\\[B,C\\]"):
        losses.listnet(s, t[:, :3])
    with pytest.raises(ValueError, match="mask shape"):
        losses.kl_distill(s, t, mask=np.ones((3, 2), bool))


def _ebr_toy():
    """Two queries, one hard negative each (G = 2): columns [p0+, n0, p1+, n1]; scores written out below."""
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.6], [0.7, 0.0]], np.float32)
    # s(q0, .) = [0.9, 0.2, 0.3, 0.7]    s(q1, .) = [0.1, 0.8, 0.6, 0.0]
    return q, p


@pytest.mark.parametrize(
    "k,mask_q0_n1,term,active",
    [
        # q0's in-batch candidates are q1's group {p1+ 0.3, n1 0.7}; q1's are {p0+ 0.1, n0 0.8}. Margin 0.5.
        (1, False, (0.3 + 0.7) / 2, 1.0),  # q0: n1 -> relu(.5-.9+.7)=.3; q1: n0 -> relu(.5-.6+.8)=.7
        (2, False, (0.3 + 0.0 + 0.7 + 0.0) / 4, 0.5),  # 2nd choices p1 (relu(.5-.9+.3)=0), p0 (relu(.5-.6+.1)=0)
        (1, True, (0.0 + 0.7) / 2, 0.5),  # n1 labelled relevant to q0: its hardest is p1 -> 0
    ],
)
def test_hardest_in_batch_by_hand(k, mask_q0_n1, term, active):
    q, p = _ebr_toy()
    mask = np.zeros((2, 4), bool)
    mask[0, 3] = mask_q0_n1
    kw = dict(temperature=0.5, group_size=2, false_negatives=mask)
    base, _ = losses.info_nce(q, p, **kw)
    total, aux = losses.info_nce(q, p, **kw, hard_in_batch_k=k, hard_in_batch_weight=2.0, hard_in_batch_margin=0.5)
    np.testing.assert_allclose(aux["hard_in_batch_loss"], term, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(aux["hard_in_batch_active"], active, rtol=1e-6)
    np.testing.assert_allclose(total, base + 2.0 * term, rtol=1e-6)
    trip, trip_aux = losses.triplet_margin(
        q,
        p,
        group_size=2,
        margin=0.5,
        false_negatives=mask,
        hard_in_batch_k=k,
        hard_in_batch_weight=2.0,
        hard_in_batch_margin=0.5,
    )
    np.testing.assert_allclose(trip, 0.0 + 2.0 * term, rtol=1e-6, atol=1e-7)  # own triplets: both outside margin
    assert float(trip_aux["active"]) == 0.0


def test_hardest_in_batch_gradient_by_hand():
    """k = 1: the term is (relu(.5-s(q0,p0)+s(q0,n1)) + relu(.5-s(q1,p1)+s(q1,n0))) / 2, so its gradient w.r.t.
    q0 is (n1 - p0) / 2 and w.r.t. q1 is (n0 - p1) / 2; the selection itself carries no gradient."""
    q, p = _ebr_toy()

    def extra(q):
        with_term = losses.info_nce(q, p, temperature=0.5, group_size=2, hard_in_batch_k=1, hard_in_batch_margin=0.5)
        return with_term[0] - losses.info_nce(q, p, temperature=0.5, group_size=2)[0]

    np.testing.assert_allclose(jax.grad(extra)(q), [(p[3] - p[0]) / 2, (p[1] - p[2]) / 2], rtol=1e-5, atol=1e-6)


def test_hardest_in_batch_over_named_axis_matches_global_batch():
    """Gathered over 4 shards, the per-shard terms average to the term of the whole batch (fixed B*k denominator)."""
    r = _rng(5)
    d, b, g, h = 4, 2, 2, 6
    q = r.normal(size=(d * b, h)).astype(np.float32)
    p = r.normal(size=(d * b * g, h)).astype(np.float32)
    kw = dict(temperature=0.3, group_size=g, hard_in_batch_k=3, hard_in_batch_margin=1.0)
    per_shard = jax.vmap(
        lambda qs, ps: losses.info_nce(qs, ps, axis_name="i", **kw)[1]["hard_in_batch_loss"], axis_name="i"
    )(q.reshape(d, b, h), p.reshape(d, b * g, h))
    whole = losses.info_nce(q, p, **kw)[1]["hard_in_batch_loss"]
    assert float(whole) > 0
    np.testing.assert_allclose(per_shard.mean(), whole, rtol=1e-5)
    with pytest.raises(ValueError, match="hard_in_batch_k=15 exceeds the 14 in-batch candidates"):
        losses.info_nce(q, p, temperature=0.3, group_size=g, hard_in_batch_k=15)


def _softplus(x):
    return float(np.log1p(np.exp(x)))


def test_lambdarank_pairwise_by_hand():
    """Query 0: list scores [2, 1, 3, 0], only column 2 (rank 3) relevant: pairs (2, j) weighted by
    |1/3 - 1/rank_j| on softplus(s_j - s_2); query 1 has no relevant candidate and adds 0 to the mean over 2."""
    scores = np.array([[2.0, 1.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
    relevant = np.array([[0, 0, 1, 0], [0, 0, 0, 0]], bool)
    valid = np.ones((2, 4), bool)
    sp = [_softplus(-1.0), _softplus(-2.0), _softplus(-3.0)]
    loss, aux = losses.lambdarank_pairwise(scores, relevant, valid)
    np.testing.assert_allclose(loss, (2 / 3 * sp[0] + 1 / 6 * sp[1] + 1 / 12 * sp[2]) / 3 / 2, rtol=1e-5)
    np.testing.assert_allclose(aux["pairs"], 1.5)
    cut, _ = losses.lambdarank_pairwise(scores, relevant, valid, metric_cut=2)  # 1/rank = 0 from rank 3 on
    np.testing.assert_allclose(cut, (1.0 * sp[0] + 0.5 * sp[1] + 0.0 * sp[2]) / 3 / 2, rtol=1e-5)
    valid[0, 3] = False  # an empty slot forms no pair
    masked, _ = losses.lambdarank_pairwise(scores, relevant, valid)
    np.testing.assert_allclose(masked, (2 / 3 * sp[0] + 1 / 6 * sp[1]) / 2 / 2, rtol=1e-5)
    # Raising the relevant score lowers the loss: the gradient on it is negative.
    assert float(jax.grad(lambda s: losses.lambdarank_pairwise(s, relevant, valid)[0])(scores)[0, 2]) < 0


def test_listwise_softmax_by_hand():
    """-log of the softmax mass on the relevant candidates of the valid ones (two relevant, one empty slot)."""
    scores = np.array([[1.0, 2.0, 0.5, 9.0]], np.float32)
    relevant = np.array([[1, 0, 1, 0]], bool)
    valid = np.array([[1, 1, 1, 0]], bool)
    e = np.exp(np.array([1.0, 2.0, 0.5]) / 0.5)
    loss, aux = losses.listwise_softmax(scores, relevant, valid, temperature=0.5)
    np.testing.assert_allclose(loss, -np.log((e[0] + e[2]) / e.sum()), rtol=1e-5)
    np.testing.assert_allclose(aux["relevant_mass"], (e[0] + e[2]) / e.sum(), rtol=1e-5)
