"""jdr/models/cpu_options.py: float32 inference executables compile without YNNPACK fusions on CPU (Eigen GEMMs,
faster there), bfloat16 ones keep them, and a user's XLA_FLAGS decides when it names the flag."""

import re

import jax
import numpy as np
import pytest

from jdr.models import inference
from jdr.models.cpu_options import YNN_FLAG, inference_compiler_options
from jdr.models.hf import load


@pytest.mark.parametrize("dtype, fused", [("float32", False), ("bfloat16", True)])
def test_float32_encode_compiles_without_ynnpack_and_bfloat16_keeps_it(tiny_model, dtype, fused):
    params, spec, _ = load(tiny_model, dtype=dtype)
    fn, _, _ = inference._compiled(tuple(jax.local_devices()), spec, "query")
    ids = np.ones((jax.local_device_count(), 16), np.int32)
    text = fn.lower(params, ids, ids).compile().as_text()
    assert (len(re.findall(r"__ynn_fusion", text)) > 0) == fused


def test_a_user_xla_flag_naming_ynnpack_decides(monkeypatch):
    assert inference_compiler_options("float32") == {YNN_FLAG: ""}
    assert inference_compiler_options("bfloat16") == {}
    monkeypatch.setenv("XLA_FLAGS", f"--{YNN_FLAG}=+dot")
    assert inference_compiler_options("float32") == {}
