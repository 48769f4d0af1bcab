"""What every benchmark reports beside its numbers: the CPU model, peak memory, a measured matmul peak; and the
one way to run a side of a benchmark in its own process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

from jdr.run_info import cpu_model  # noqa: E402,F401  (re-exported; one definition: jdr/run_info.py)

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(n: int = 2048, steps: int = 5) -> float:
    """Measured float32 FLOP/s of an n x n x n jitted `jnp.dot` on the default device (best of `steps`)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def jdr_env() -> dict[str, str]:
    """The environment the `jdr` command gives itself: mimalloc preloaded unless JDR_MALLOC opts out (jdr/malloc.py;
    a benchmark's jdr side runs as a script, so it gets the command's allocator here)."""
    from jdr.malloc import find_mimalloc, malloc_mode

    env = dict(os.environ)
    lib = find_mimalloc() if malloc_mode() in ("auto", "mimalloc") else None
    if lib and "malloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, (lib, env.get("LD_PRELOAD"))))
    return env


def side_env() -> dict[str, str]:
    """What each side ran under, for the results file: the jdr side's allocator and XLA_FLAGS, the peer's."""
    jdr = jdr_env().get("LD_PRELOAD", "")
    flags = os.environ.get("XLA_FLAGS", "")
    return {
        "jdr": ("mimalloc (the `jdr` command's default)" if "mimalloc" in jdr else jdr or "glibc")
        + (f", XLA_FLAGS={flags}" if flags else ", float32 inference without YNNPACK (jdr/models/cpu_options.py)"),
        "peer": os.environ.get("LD_PRELOAD") or "glibc",
    }


def run_child(python: str, script: str, side: str, argv: list[str]) -> dict:
    """Run `script --child side argv` under `python`; its last stdout line is the side's JSON result. jdr sides
    (`side` starting with "jdr") run in the `jdr` command's environment (`jdr_env`), the peer in this one."""
    env = jdr_env() if side.startswith("jdr") else None
    out = subprocess.run([python, script, "--child", side, *argv], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
