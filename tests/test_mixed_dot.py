"""jdr.models.mixed_dot: the bfloat16 dot whose backward dots stay bfloat16; the encoder's bf16 gradients through it."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdr.models import bert, hf
from jdr.models import encoder as enc
from jdr.models.mixed_dot import mixed_dot_general
from jdr.models.testing import write_tiny_model

PLAIN = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
# (lhs shape, rhs shape, dimension numbers): a Dense layer, both attention dots, and a contraction that is not
# the last axis with a batch axis in the middle (the transpose back to the operand's axis order is exercised).
CASES = [
    ((3, 5, 8), (8, 6), (((2,), (0,)), ((), ()))),
    ((2, 3, 5, 4), (2, 3, 7, 4), (((3,), (3,)), ((0, 1), (0, 1)))),
    ((2, 3, 5, 7), (2, 3, 7, 4), (((3,), (2,)), ((0, 1), (0, 1)))),
    ((4, 3, 7, 6), (6, 3, 4, 5), (((0, 3), (2, 0)), ((1,), (1,)))),
]


def _operands(lhs_shape, rhs_shape, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (
        jax.random.normal(k1, lhs_shape, jnp.float32).astype(jnp.bfloat16),
        jax.random.normal(k2, rhs_shape, jnp.float32).astype(jnp.bfloat16),
    )


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", CASES)
def test_forward_equals_lax_dot_general_and_gradients_are_those_of_the_rounded_cotangent(lhs_shape, rhs_shape, dims):
    lhs, rhs = _operands(lhs_shape, rhs_shape)
    out = mixed_dot_general(lhs, rhs, dims)
    assert out.dtype == jnp.float32
    # The same exact bfloat16 products, summed in float32 (in another order where an operand was transposed).
    np.testing.assert_allclose(np.asarray(out), np.asarray(PLAIN(lhs, rhs, dims)), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(1), out.shape, jnp.float32)
    d_lhs, d_rhs = jax.vjp(lambda a, b: mixed_dot_general(a, b, dims), lhs, rhs)[1](g)
    assert d_lhs.dtype == d_rhs.dtype == jnp.bfloat16
    # Reference: float32 autodiff of the float32 dot, fed the cotangent rounded to bfloat16 (the same exact
    # products; only the summation order and the final rounding to bfloat16 may differ).
    g16 = g.astype(jnp.bfloat16).astype(jnp.float32)
    f32 = functools.partial(jax.lax.dot_general, dimension_numbers=dims, precision=jax.lax.Precision.HIGHEST)
    ref_lhs, ref_rhs = jax.vjp(f32, lhs.astype(jnp.float32), rhs.astype(jnp.float32))[1](g16)
    for got, ref in ((d_lhs, ref_lhs), (d_rhs, ref_rhs)):
        assert got.shape == ref.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), rtol=1e-2, atol=1e-2)


def _dot_operand_types(lowered_text: str) -> set[str]:
    """The operand element types of every dot_general in StableHLO text, e.g. {"bf16, bf16"}."""
    types = set()
    for line in lowered_text.splitlines():
        if "stablehlo.dot_general" in line:
            sig = re.search(r":\s*\(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)", line)
            types.add(f"{sig.group(1)}, {sig.group(2)}")
    return types


def _compiled_dot_operand_types(hlo_text: str) -> set[str]:
    """The operand element types of every dot in optimised HLO text (which names operands without types)."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo_text))
    return {f"{types[a]}, {types[b]}" for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo_text)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("tiny") / "bert", num_layers=1)  # hidden 32, 2 heads of 16
    params, spec, _ = hf.load(path)
    r = np.random.default_rng(0)
    ids = r.integers(5, spec.bert.vocab_size, size=(4, 16)).astype(np.int32)
    mask = (np.arange(16)[None, :] < np.array([16, 7, 3, 10])[:, None]).astype(np.int32)
    return params, spec, ids, mask


def _loss_and_grad(params, spec, ids, mask):
    def loss(p):  # dropout on, as in training
        e = enc.encode(p, spec, ids, mask, tower="passage", deterministic=False, rng=jax.random.key(3))
        return jnp.sum(jnp.sin(3.0 * e))

    return jax.value_and_grad(loss)


def test_bfloat16_encoder_backward_runs_no_float32_dot(tiny):
    params, spec, ids, mask = tiny
    spec16 = dataclasses.replace(spec, dtype="bfloat16")
    types = _dot_operand_types(jax.jit(_loss_and_grad(params, spec16, ids, mask)).lower(params).as_text())
    assert types == {"bf16, bf16"}


def test_bfloat16_encoder_dots_stay_bfloat16_after_xla_cpu_compiles_them(tiny, monkeypatch):
    """XLA:CPU upcasts to float32 every bfloat16 dot YNNPACK would not take (transposed operands included): after
    compilation every dot of the bf16 encoder's forward and backward must still read bfloat16."""
    matmul = functools.partial(PLAIN, dimension_numbers=(((1,), (0,)), ((), ())))
    probe = jax.jit(matmul).lower(*_operands((64, 64), (64, 64))).compile().as_text()
    if jax.default_backend() != "cpu" or _compiled_dot_operand_types(probe) != {"bf16, bf16"}:
        pytest.skip("this XLA:CPU upcasts even a plain bfloat16 dot (no YNNPACK): nothing to keep")
    params, spec, ids, mask = tiny
    fn = jax.jit(_loss_and_grad(params, dataclasses.replace(spec, dtype="bfloat16"), ids, mask))
    assert _compiled_dot_operand_types(fn.lower(params).compile().as_text()) == {"bf16, bf16"}
    monkeypatch.setattr(bert, "mixed_dot_general", PLAIN)  # the step before: plain autodiff, upcast by XLA
    fn = jax.jit(_loss_and_grad(params, dataclasses.replace(spec, dtype="bfloat16"), ids, mask))
    assert "f32, f32" in _compiled_dot_operand_types(fn.lower(params).compile().as_text())


def test_bfloat16_loss_and_gradients_as_close_to_float32_as_plain_autodiff(tiny, monkeypatch):
    params, spec, ids, mask = tiny
    spec16 = dataclasses.replace(spec, dtype="bfloat16")
    loss, grads = jax.jit(_loss_and_grad(params, spec16, ids, mask))(params)
    loss32, grads32 = jax.jit(_loss_and_grad(params, spec, ids, mask))(params)
    monkeypatch.setattr(bert, "mixed_dot_general", PLAIN)  # the step before: float32 cotangents, float32 dots
    plain_fn = _loss_and_grad(params, spec16, ids, mask)
    assert "f32, f32" in _dot_operand_types(jax.jit(plain_fn).lower(params).as_text())
    plain_loss, plain_grads = jax.jit(plain_fn)(params)
    # The same bfloat16 products accumulated in float32 (the attention's were upcast before): summation order only.
    np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-4)
    flat = [[np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(t)] for t in (grads, plain_grads, grads32)]
    scale = np.linalg.norm(np.concatenate(flat[2]))
    assert np.linalg.norm(np.concatenate(flat[0]) - np.concatenate(flat[1])) < 1e-2 * scale
    for (path, _), g, p, ref in zip(jax.tree_util.tree_leaves_with_path(grads), *flat):
        # Rounding the cotangent to bfloat16 (8 significant bits) costs no accuracy the bfloat16 operands have not
        # already cost: each leaf is within 1.5x plain autodiff's distance to the float32 gradient (plus a floor
        # for leaves whose true gradient is ~0, e.g. the key bias, which softmax cancels).
        err, plain_err = np.linalg.norm(g - ref), np.linalg.norm(p - ref)
        assert err <= 1.5 * plain_err + 1e-5 * scale, jax.tree_util.keystr(path)


def test_float32_encoder_never_calls_the_mixed_dot(tiny, monkeypatch):
    params, spec, ids, mask = tiny

    def refuse(*a, **k):
        raise AssertionError("float32 must keep lax.dot_general")

    monkeypatch.setattr(bert, "mixed_dot_general", refuse)
    loss, _ = jax.jit(_loss_and_grad(params, spec, ids, mask))(params)
    assert np.isfinite(float(loss))
    assert _dot_operand_types(jax.jit(_loss_and_grad(params, spec, ids, mask)).lower(params).as_text()) == {"f32, f32"}
