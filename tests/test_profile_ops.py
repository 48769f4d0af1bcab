"""benchmarks/profile_ops.py's pure parts: torch op -> shared category, XLA thunk -> shared category, the markdown
table. No profiling here (that needs the real model and minutes)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_ops  # noqa: E402
from profile_encode import parse_hlo  # noqa: E402


@pytest.mark.parametrize(
    "chain, expected",
    [
        (["aten::addmm", "aten::linear"], "GEMM"),
        (["aten::mm", "AddmmBackward0", "autograd::engine::evaluate_function: AddmmBackward0"], "GEMM"),
        (["aten::bmm", "aten::matmul"], "attention"),
        (["aten::_scaled_dot_product_flash_attention_for_cpu_backward", "ScaledDotProductBackward0"], "attention"),
        (["aten::_softmax", "aten::softmax"], "softmax"),
        (["aten::_log_softmax_backward_data", "LogSoftmaxBackward0"], "softmax"),
        (["aten::native_layer_norm_backward", "NativeLayerNormBackward0"], "layernorm"),
        (["aten::gelu_backward", "GeluBackward0"], "GELU"),
        (["aten::index_select", "aten::embedding"], "embedding"),
        (["aten::embedding_dense_backward", "aten::embedding_backward"], "embedding"),
        (["aten::copy_", "aten::_to_copy", "aten::to"], "copies / transposes"),
        (["aten::empty", "aten::addmm"], "allocator"),
        (["aten::add"], "elementwise / other"),
        (["aten::fill_", "aten::zeros"], "elementwise / other"),
    ],
)
def test_torch_op_maps_to_the_category_of_its_nearest_named_op(chain, expected):
    assert profile_ops.torch_category(chain) == expected


@pytest.mark.parametrize(
    "chain, expected",
    [
        (["aten::mul_", "Optimizer.step#AdamW.step"], "optimizer"),
        (["aten::empty", "aten::sqrt", "Optimizer.step#AdamW.step"], "optimizer"),
        (["aten::bernoulli_", "aten::dropout"], "dropout (incl. RNG)"),
        (
            ["aten::_softmax", "aten::_scaled_dot_product_attention_math", "aten::scaled_dot_product_attention"],
            "attention",
        ),
    ],
)
def test_torch_op_inside_optimizer_dropout_or_attention_takes_that_scope(chain, expected):
    assert profile_ops.torch_category(chain) == expected


def _meta(op_name: str) -> str:
    return f'metadata={{op_name="{op_name}"}}'


MODEL = "jit(_fun)/jvp(BertModel)/encoder/layer_0"
HLO = f"""HloModule step

%dense (p0: f32[8,4], p1: f32[4,4]) -> f32[8,4] {{
  %p0 = f32[8,4]{{1,0}} parameter(0)
  %p1 = f32[4,4]{{1,0}} parameter(1)
  ROOT %d = f32[8,4]{{1,0}} dot(%p0, %p1), lhs_contracting_dims={{1}}, {_meta(MODEL + "/x/dot")}
}}

%scores (p0: f32[2,4,4], p1: f32[2,4,4]) -> f32[2,4,4] {{
  %p0 = f32[2,4,4]{{2,1,0}} parameter(0)
  %p1 = f32[2,4,4]{{2,1,0}} parameter(1)
  ROOT %d = f32[2,4,4]{{2,1,0}} dot(%p0, %p1), lhs_batch_dims={{0}}, lhs_contracting_dims={{2}}
}}

%dropout (p0: u32[8,4]) -> u32[8,4] {{
  %p0 = u32[8,4]{{1,0}} parameter(0)
  %x = u32[8,4]{{1,0}} xor(%p0, %p0), {_meta(MODEL + "/output/Dropout_0/xor")}
  ROOT %s = u32[8,4]{{1,0}} shift-right-logical(%x, %p0), {_meta(MODEL + "/output/Dropout_0/shift_right_logical")}
}}

%adam (p0: f32[8,4], p1: f32[8,4]) -> f32[8,4] {{
  %p0 = f32[8,4]{{1,0}} parameter(0)
  %p1 = f32[8,4]{{1,0}} parameter(1)
  %m = f32[8,4]{{1,0}} multiply(%p0, %p1), {_meta("jit(_fun)/mul")}
  ROOT %a = f32[8,4]{{1,0}} add(%m, %p1), {_meta("jit(_fun)/add")}
}}

%head_transpose (p0: f32[8,4]) -> f32[4,8] {{
  %p0 = f32[8,4]{{1,0}} parameter(0), {_meta("flat_args[3]")}
  %b = f32[8,4]{{1,0}} bitcast(%p0), {_meta("flat_args[3]")}
  ROOT %t = f32[4,8]{{1,0}} transpose(%b), dimensions={{1,0}}, {_meta(MODEL + "/attention/self/transpose")}
}}

ENTRY %main (a: f32[8,4], b: f32[4,4], q: f32[2,4,4], u: u32[8,4]) -> f32[8,4] {{
  %a = f32[8,4]{{1,0}} parameter(0)
  %b = f32[4,4]{{1,0}} parameter(1)
  %q = f32[2,4,4]{{2,1,0}} parameter(2)
  %u = u32[8,4]{{1,0}} parameter(3)
  %gemm = f32[8,4]{{1,0}} fusion(%a, %b), kind=kOutput, calls=%dense
  %att = f32[2,4,4]{{2,1,0}} fusion(%q, %q), kind=kOutput, calls=%scores
  %rng = u32[8,4]{{1,0}} fusion(%u), kind=kLoop, calls=%dropout
  %upd = f32[8,4]{{1,0}} fusion(%gemm, %a), kind=kLoop, calls=%adam
  ROOT %heads = f32[4,8]{{1,0}} fusion(%upd), kind=kLoop, calls=%head_transpose
}}
"""


def _categories(train: bool) -> dict[str, str]:
    comps, entry = parse_hlo(HLO)
    return {
        name: profile_ops.jdr_category(op, rest, comps, train) for name, op, rest in comps[entry] if op != "parameter"
    }


def test_jdr_thunks_are_categorised_by_dot_shape_then_scope_then_fused_ops():
    assert _categories(train=True) == {
        "gemm": "GEMM",
        "att": "attention",
        "rng": "dropout (incl. RNG)",
        "upd": "optimizer",
        "heads": "copies / transposes",
    }


def test_jdr_code_outside_the_model_is_optimizer_only_in_a_train_step():
    assert _categories(train=False)["upd"] == "elementwise / other"


def test_argument_names_do_not_make_a_model_thunk_an_optimizer_thunk():
    assert profile_ops.scope_category("flat_args[3]", train=True) is None
    assert _categories(train=True)["heads"] == "copies / transposes"


def _side(gemm_ms: float, other_ms: float, shape: str) -> dict:
    return {
        "shape": shape,
        "wall_s": [0.5, 0.7],
        "wall_profiled_s": [0.8],
        "by_category_ms": {"GEMM": gemm_ms, "elementwise / other": other_ms},
        "summed_ms": gemm_ms + other_ms,
        "top_ms": [("dot.1", "GEMM", gemm_ms)],
    }


def _result(runs: dict) -> dict:
    return {
        "cpu": "Test CPU",
        "command": "python benchmarks/profile_ops.py --note x",
        "env": {"jdr": "mimalloc", "peer": "glibc"},
        "args": {"note": "idle machine", "encode_steps": 2, "train_steps": 1},
        "runs": runs,
    }


def test_markdown_gives_each_category_ms_and_share_on_both_sides():
    text = profile_ops.markdown(
        _result({"encode float32": {"jdr": _side(30, 10, "4 x 32"), "peer": _side(60, 60, "4 x 32")}})
    )
    assert "| GEMM | 30.0 | 75.0 | 60.0 | 50.0 |" in text
    assert "| elementwise / other | 10.0 | 25.0 | 60.0 | 50.0 |" in text
    assert "| allocator | in thunks | — | 0.0 | 0.0 |" in text
    assert "wall 600 ms without the profiler, 800 ms under it" in text
    assert "Test CPU" in text and "idle machine" in text and "`python benchmarks/profile_ops.py --note x`" in text
    assert len([line for line in text.splitlines() if line.startswith("| ") and "category" not in line]) == len(
        profile_ops.CATEGORIES
    )


def test_markdown_names_a_side_that_did_not_run_and_dashes_its_cells():
    text = profile_ops.markdown(
        _result({"train bfloat16": {"jdr": _side(30, 10, "4 x 16"), "peer_skipped": "No module named 'torch'"}})
    )
    assert "- peer: not run (No module named 'torch')" in text
    assert "| GEMM | 30.0 | 75.0 | — | — |" in text
