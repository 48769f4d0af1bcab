"""The bfloat16 dot of mixed-precision training: bfloat16 operands, float32 accumulation and output, and a backward
pass whose dots are bfloat16 x bfloat16 -> float32 too, laid out so that XLA:CPU runs every one in YNNPACK.

Two things kept a bfloat16 train step's dots in float32 (benchmarks/results/bf16_train_step.md):

1. The cotangent. `lax.dot_general(..., preferred_element_type=float32)` outputs float32, so its cotangent is
   float32 and JAX's transpose rule computes both gradient dots as `dot_general(float32 cotangent, bfloat16
   operand)`, which JAX lowers on CPU by converting both operands to float32. Here the cotangent is rounded to
   the operands' dtype first (what torch autocast does: its bfloat16 matmul output makes the cotangent bfloat16).
2. The layout. XLA:CPU keeps a bfloat16 dot bfloat16 only if YNNPACK takes it (`IsDotSupportedByYnn`, checked by
   `FloatNormalization` before layout assignment); every other one is upcast to a float32 dot with two converts.
   YNNPACK refuses a left operand whose contracting dimension is not its minor one, and any operand in a
   transposed layout, which a `transpose` is until layout assignment. That excluded every weight gradient
   (x^T g contracts the token axis, the major one of both operands), the attention's key and value gradients,
   and, in the forward too, both attention dots (their operands are the heads-first transposes). So on CPU each
   dot here puts its left operand into [batch, kept, contracted] order and passes both operands through a
   flatten / optimisation barrier / unflatten: XLA then sees a plain row-major array (a no-op when it is one
   already; for a transpose, the one copy that makes it one). Of the two ways to write a gradient dot, the one
   that transposes fewer elements is used.

The forward computes the same products as `lax.dot_general(..., preferred_element_type=float32)` (summation
order aside); the gradients are returned in the operands' dtype, as JAX's own rule returns them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax


def mixed_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general(lhs, rhs, dimension_numbers)` accumulated and returned in float32, differentiated with
    low-precision dots (see the module docstring). The signature of `lax.dot_general`, so it can be passed as
    `nn.Dense(dot_general=...)`; `precision` and `preferred_element_type` are accepted and ignored (the result
    is always float32)."""
    del precision, preferred_element_type
    (lc, rc), (lb, rb) = dimension_numbers
    dims = (tuple(map(int, lc)), tuple(map(int, rc))), (tuple(map(int, lb)), tuple(map(int, rb)))
    return _dot(lhs, rhs, dims)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot(lhs, rhs, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    return _f32_dot(lhs, rhs, lc, rc, lb, rb)


def _dot_fwd(lhs, rhs, dimension_numbers):
    return _dot(lhs, rhs, dimension_numbers), (lhs, rhs)


def _dot_bwd(dimension_numbers, residuals, g):
    lhs, rhs = residuals
    (lc, rc), (lb, rb) = dimension_numbers
    d_lhs = _grad_operand(g.astype(lhs.dtype), lhs.ndim, rhs, lc, rc, lb, rb, x_is_lhs=True)
    d_rhs = _grad_operand(g.astype(rhs.dtype), rhs.ndim, lhs, rc, lc, rb, lb, x_is_lhs=False)
    return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


_dot.defvjp(_dot_fwd, _dot_bwd)


def _kept(ndim: int, contract, batch) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i not in contract and i not in batch)


def _grad_operand(g, x_ndim: int, y, x_contract, y_contract, x_batch, y_batch, *, x_is_lhs: bool):
    """The gradient w.r.t. operand x of the dot of x and y (x its left operand when `x_is_lhs`) given the output
    cotangent `g` (axes: batch, left kept, right kept): one float32-accumulating dot of g with y over y's kept
    axes, then a transpose to x's axis order (the contraction of JAX's `_dot_general_transpose_lhs`)."""
    x_kept, y_kept = _kept(x_ndim, x_contract, x_batch), _kept(y.ndim, y_contract, y_batch)
    nb = len(x_batch)
    g_batch = tuple(range(nb))
    g_y = tuple(range(nb + len(x_kept), g.ndim)) if x_is_lhs else tuple(range(nb, nb + len(y_kept)))
    # Which axis of x each output axis is: dot(g, y) gives (batch, x kept, x contracted in y's order).
    x_contract_by_y = tuple(x_contract[y_contract.index(d)] for d in sorted(y_contract))
    g_first = (g, y, g_y, y_kept, g_batch, y_batch, (*x_batch, *x_kept, *x_contract_by_y))
    y_first = (y, g, y_kept, g_y, y_batch, g_batch, (*x_batch, *x_contract_by_y, *x_kept))
    a, b, ac, bc, ab, bb, labels = min((g_first, y_first), key=lambda o: _transposed_elements(*o[:6]))
    out = _f32_dot(a, b, ac, bc, ab, bb)
    order = tuple(labels.index(i) for i in range(x_ndim))
    if order == tuple(range(x_ndim)):
        return out
    # On CPU the barrier keeps XLA from folding this transpose into the dot by swapping its operands, which
    # would give the dot a left operand YNNPACK refuses after its dtype was settled as bfloat16.
    return (_row_major(out) if jax.default_backend() == "cpu" else out).transpose(order)


def _f32_dot(lhs, rhs, lc, rc, lb, rb):
    """`lax.dot_general` accumulating in float32 (output axes: batch, lhs kept, rhs kept); on CPU with operands
    arranged as YNNPACK takes them (module docstring)."""
    if jax.default_backend() != "cpu":
        return lax.dot_general(lhs, rhs, ((lc, rc), (lb, rb)), preferred_element_type=jnp.float32)
    lhs, lc, lb = _as_lhs(lhs, lc, lb)
    rhs, rc, rb = _as_rhs(rhs, rc, rb)
    return lax.dot_general(_row_major(lhs), _row_major(rhs), ((lc, rc), (lb, rb)), preferred_element_type=jnp.float32)


def _lhs_order(ndim, contract, batch) -> tuple[int, ...]:
    return (*batch, *_kept(ndim, contract, batch), *contract)


def _rhs_in_order(ndim, contract, batch) -> bool:
    """Whether a right operand is [batch, contracted, kept] or [batch, kept, contracted] as it is."""
    kept, identity = _kept(ndim, contract, batch), tuple(range(ndim))
    return (*batch, *contract, *kept) == identity or (*batch, *kept, *contract) == identity


def _transposed_elements(lhs, rhs, lc, rc, lb, rb) -> int:
    """Elements `_f32_dot` would copy to reorder the operands of dot(lhs, rhs)."""
    n = 0 if _lhs_order(lhs.ndim, lc, lb) == tuple(range(lhs.ndim)) else math.prod(lhs.shape)
    return n + (0 if _rhs_in_order(rhs.ndim, rc, rb) else math.prod(rhs.shape))


def _as_lhs(x, contract, batch):
    """x transposed to [batch, kept, contracted] (if it is not already) and its new dimension numbers."""
    order = _lhs_order(x.ndim, contract, batch)
    if order == tuple(range(x.ndim)):
        return x, contract, batch
    nb, nc = len(batch), len(contract)
    return x.transpose(order), tuple(range(x.ndim - nc, x.ndim)), tuple(range(nb))


def _as_rhs(x, contract, batch):
    """x transposed to [batch, contracted, kept] unless it is in one of the two orders YNNPACK takes."""
    if _rhs_in_order(x.ndim, contract, batch):
        return x, contract, batch
    nb, nc = len(batch), len(contract)
    order = (*batch, *contract, *_kept(x.ndim, contract, batch))
    return x.transpose(order), tuple(range(nb, nb + nc)), tuple(range(nb))


def _row_major(x):
    """x as XLA sees a plain row-major array when it decides a dot's dtype: flattened, through an optimisation
    barrier (which stops XLA folding the reshape away, and a preceding transpose back into the dot), reshaped
    back. A reshape of a row-major array is a bitcast, so this copies only what was transposed."""
    return lax.optimization_barrier(x.reshape(-1)).reshape(x.shape)
