"""Cross-encoder and distillation losses computed by hand on a toy batch (2 queries, groups of 3)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jdr import losses
from jdr.losses_rerank import distill, group_scores, listwise_kl, localized_contrastive, margin_mse, pointwise_bce

S = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, -1.0]], np.float32)  # query 1's negative outscores its positive
T = np.array([[3.0, 0.0, 1.0], [2.0, 2.0, 0.0]], np.float32)


def _lse(row):
    return math.log(sum(math.exp(x) for x in row))


def test_localized_contrastive_by_hand():
    want = ((_lse([2, 1, 0]) - 2) + (_lse([0, 1, -1]) - 0)) / 2
    loss, aux = localized_contrastive(S)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(aux["accuracy"]) == 0.5 and float(aux["pos_score"]) == 1.0 and float(aux["neg_score"]) == 0.25
    half, _ = localized_contrastive(S, temperature=2.0)
    assert float(half) == pytest.approx(((_lse([1, 0.5, 0]) - 1) + (_lse([0, 0.5, -0.5]) - 0)) / 2, rel=1e-6)


def test_pointwise_bce_by_hand():
    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    want = sum(bce(S[i, j], float(j == 0)) for i in range(2) for j in range(3)) / 6
    loss, _ = pointwise_bce(S)
    assert float(loss) == pytest.approx(want, rel=1e-6)


def test_margin_mse_by_hand():
    # margins: student [1, 2], [-1, 1]; teacher [3, 2], [0, 2] -> squared errors 4, 0, 1, 1
    assert float(margin_mse(S, T)) == pytest.approx((4 + 0 + 1 + 1) / 4)


def test_listwise_kl_by_hand_with_teacher_temperature():
    def softmax(row):
        z = sum(math.exp(x) for x in row)
        return [math.exp(x) / z for x in row]

    want = 0.0
    for s, t in zip(S, T):
        ps, pt = softmax(s), softmax([x / 2 for x in t])
        want += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert float(listwise_kl(S, T, teacher_temperature=2.0)) == pytest.approx(want / 2, rel=1e-5)
    assert float(listwise_kl(S, S)) == pytest.approx(0.0, abs=1e-6)


def test_distill_uses_group_logits_and_adds_weighted_info_nce():
    rng = np.random.default_rng(0)
    q, p = rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    logits = np.stack([p[3 * i : 3 * i + 3] @ q[i] for i in range(2)]) / 0.5
    np.testing.assert_allclose(np.asarray(group_scores(q, p, 3)) / 0.5, logits, rtol=1e-5)
    alone, aux = distill(q, p, T, loss="margin_mse", group_size=3, temperature=0.5)
    assert float(alone) == pytest.approx(float(margin_mse(logits, T)), rel=1e-5)
    both, aux = distill(q, p, T, loss="kl", group_size=3, temperature=0.5, teacher_temperature=2.0, info_nce_weight=0.3)
    nce, _ = losses.info_nce(jnp.asarray(q), jnp.asarray(p), temperature=0.5, group_size=3)
    want = float(listwise_kl(logits, T, teacher_temperature=2.0)) + 0.3 * float(nce)
    assert float(both) == pytest.approx(want, rel=1e-5)
    assert float(aux["info_nce_loss"]) == pytest.approx(float(nce), rel=1e-6)


def test_bad_shapes_and_names_are_one_line():
    with pytest.raises(ValueError, match="group size must be >= 2"):
        localized_contrastive(S[:, :1])
    with pytest.raises(ValueError, match="distill.loss must be one of"):
        distill(np.ones((2, 4)), np.ones((6, 4)), T, loss="mse", group_size=3, temperature=1.0)
