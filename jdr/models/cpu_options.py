"""XLA:CPU compiler options of the inference executables, chosen by compute dtype (per executable, not XLA_FLAGS).

jaxlib 0.10 sends every dot on CPU to YNNPACK. For float32 that is the slower choice on the CPUs measured here: an
encode batch of MiniLM (64 passages x 256 tokens) ran 1.28-1.33x faster with XLA's own dot emitter (Eigen GEMMs)
on the idle 2-core AMD EPYC (`benchmarks/results/xla_flags_encode*.md`), and YNNPACK's float32 calls spend 4x the
kernel time mapping fresh output pages. For bfloat16 YNNPACK is the fast path (without it a bfloat16 dot is upcast
to a float32 Eigen GEMM: 0.75x). So float32 inference executables are compiled without YNNPACK fusions and
bfloat16 ones keep them. The train step is unaffected (pmap takes no compiler options, and its A/B showed no
difference: `benchmarks/results/xla_flags_train_step_f32.md`).

A user who sets `--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS decides for every executable; other
backends get no options. The choice changes float32 results in the last bits (another GEMM's summation order),
not their reproducibility: the same process on the same CPU gives the same bits.
"""

from __future__ import annotations

import os

import jax

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"


def inference_compiler_options(dtype: str) -> dict[str, str]:
    """`compiler_options` for `jax.jit` of an inference executable computing in `dtype` on the default backend."""
    if jax.default_backend() != "cpu" or YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {YNN_FLAG: ""} if str(dtype) == "float32" else {}
