"""GradCache vs the plain train step: peak memory and seconds per example at growing global batch.

all-MiniLM-L6-v2, InfoNCE over in-batch + one hard negative per query, queries 64 / passages 256 tokens (random
ids, no padding), AdamW, dropout on, one process on this machine's devices. For each (batch, step) configuration a
fresh subprocess compiles the step, reads XLA's memory analysis of the compiled program (arguments + outputs -
donated aliases + temporaries), and — only if the process's RSS plus what running adds (temporaries + outputs -
aliases) fits `--budget-gib` — runs `--warmup` + `--steps` steps and
records seconds per step and the process's peak RSS (getrusage). A configuration that would not fit is reported
from the memory analysis alone, never run. The same-batch ratio GradCache / plain is printed next to both.

    python benchmarks/grad_cache.py                                  # batches 32,128,512; chunk 32 (+ chunk 8 at 32)
    python benchmarks/grad_cache.py --batches 4,8 --query-len 16 --passage-len 32 --chunk 2 --extra-chunks 1 \\
        --steps 1 --warmup 0 --out /tmp/gc_smoke                     # smoke run (seconds)

Writes `benchmarks/results/grad_cache.json` and `.md` (or `--out` + .json/.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from jdr.run_info import cpu_model

GIB = 2**30
RESULTS = Path(__file__).resolve().parent / "results" / "grad_cache"


def peak_rss_gib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def rss_gib() -> float:
    """This process's resident set size now."""
    import psutil

    return psutil.Process().memory_info().rss / GIB


def build(args, batch_size: int, chunk: int):
    """Compile one (batch, chunk) step: returns (compiled step, state, device batch, rng, compile seconds)."""
    import jax
    import numpy as np

    from jdr.models import encoder as enc
    from jdr.models import hf
    from jdr.train.grad_cache import make_grad_cache_step
    from jdr.train.optim import make_optimizer
    from jdr.train.state import TrainState
    from jdr.train.step import make_train_step, pmap_train_step, replicate

    params, spec, _ = hf.load(hf.find_minilm(), query_max_length=args.query_len, passage_max_length=args.passage_len)

    def encode_fn(p, ids, mask, tower, deterministic, rng):
        return enc.encode(p, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    n_dev, g = jax.local_device_count(), 1 + args.negatives
    if batch_size % n_dev:
        raise SystemExit(f"--batch {batch_size} is not divisible by the {n_dev} local devices")
    r = np.random.default_rng(0)
    qi = r.integers(1000, spec.bert.vocab_size, size=(batch_size, args.query_len), dtype=np.int32)
    pi = r.integers(1000, spec.bert.vocab_size, size=(batch_size * g, args.passage_len), dtype=np.int32)
    batch = {"query_ids": qi, "query_mask": np.ones_like(qi), "passage_ids": pi, "passage_mask": np.ones_like(pi)}
    batch = {k: v.reshape(n_dev, -1, *v.shape[1:]) for k, v in batch.items()}
    tx, lr_at = make_optimizer(lr=2e-5, total_steps=1000, warmup_steps=0)
    kw = dict(loss_name="info_nce", loss_kwargs={"temperature": 0.05}, tx=tx, lr_at=lr_at)
    step_fn = make_grad_cache_step(encode_fn, chunk=chunk, **kw) if chunk else make_train_step(encode_fn, **kw)
    rng = jax.random.key(0, impl=args.rng_impl)
    state = replicate(TrainState.create(params, tx))
    start = time.perf_counter()
    compiled = pmap_train_step(step_fn).lower(state, batch, rng).compile()
    return compiled, state, batch, rng, time.perf_counter() - start


class Runner:
    """Runs a compiled step on its own donated state; `__call__` blocks until the step is done."""

    def __init__(self, compiled, state, batch, rng):
        self.compiled, self.state, self.batch, self.rng = compiled, state, batch, rng

    def __call__(self) -> float:
        import jax
        import numpy as np

        self.state, metrics = self.compiled(self.state, self.batch, self.rng)
        jax.block_until_ready(metrics["loss"])
        return float(np.mean(metrics["loss"]))


def worker(args) -> dict:
    """One configuration in this process: compile, memory analysis, then (if it fits) time the steps."""
    import jax

    out = {
        "batch": args.batch,
        "chunk": args.chunk,
        "devices": jax.local_device_count(),
        "baseline_rss_gib": peak_rss_gib(),
    }
    compiled, state, batch, rng, out["compile_s"] = build(args, args.batch, args.chunk)
    mem = compiled.memory_analysis()
    xla = {k: getattr(mem, f"{k}_size_in_bytes") / GIB for k in ("argument", "output", "alias", "temp")}
    out["xla_gib"] = xla
    out["xla_peak_gib"] = (xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]) * out["devices"]
    out["rss_after_compile_gib"] = peak_rss_gib()
    # On CPU the state (the step's arguments) already lives in this process's RSS: what running adds is the
    # program's temporaries and outputs not aliased to a donated argument.
    import psutil

    now = rss_gib()
    out["predicted_peak_gib"] = now + (xla["temp"] + xla["output"] - xla["alias"]) * out["devices"]
    # Never run into swap or the OOM killer: the budget, or what this machine has free now if that is less.
    out["limit_gib"] = min(args.budget_gib, now + psutil.virtual_memory().available / GIB)
    if out["predicted_peak_gib"] > out["limit_gib"]:
        out["ran"] = False
        return out
    run = Runner(compiled, state, batch, rng)
    for _ in range(args.warmup):
        run()
    start = time.perf_counter()
    losses = [run() for _ in range(args.steps)]
    seconds = (time.perf_counter() - start) / args.steps
    out.update(
        ran=True,
        seconds_per_step=seconds,
        seconds_per_example=seconds / args.batch,
        peak_rss_gib=peak_rss_gib(),
        loss=losses[-1],
    )
    return out


def ab_worker(args) -> dict:
    """Plain and GradCache at `args.batch` in ONE process, timed alternately (plain, GC, GC, plain, ...): the
    ratio survives a loaded machine, unlike the separate-process timings."""
    runs = {0: Runner(*build(args, args.batch, 0)[:4]), args.chunk: Runner(*build(args, args.batch, args.chunk)[:4])}
    for run in runs.values():
        run()  # warm-up
    seconds = {c: 0.0 for c in runs}
    for i in range(args.ab_rounds):
        for c in list(runs) if i % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[c]()
            seconds[c] += time.perf_counter() - start
    plain, cached = seconds[0] / args.ab_rounds, seconds[args.chunk] / args.ab_rounds
    return {
        "batch": args.batch,
        "chunk": args.chunk,
        "rounds": args.ab_rounds,
        "plain_s_per_step": plain,
        "grad_cache_s_per_step": cached,
        "grad_cache_over_plain": cached / plain,
        "load_avg": os.getloadavg(),
    }


def run_config(args, batch: int, chunk: int, mode: str = "--worker") -> dict:
    """Run one configuration in a fresh Python process (clean peak RSS) and parse its JSON line."""
    cmd = [sys.executable, __file__, mode, "--batch", str(batch), "--chunk", str(chunk)]
    for flag in ("negatives", "query_len", "passage_len", "steps", "warmup", "budget_gib", "rng_impl", "ab_rounds"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        return {"batch": batch, "chunk": chunk, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    """The readable table: memory (XLA + RSS), s/example, GradCache / plain at the same batch."""
    a = result["args"]
    lines = [
        f"# GradCache vs plain train step ({a['model']})",
        "",
        f"CPU: {result['cpu']} ({result['cpu_count']} cores); {a['negatives']} hard negative(s), queries "
        f"{a['query_len']} / passages {a['passage_len']} tokens, dropout on ({a['rng_impl']}), AdamW; memory "
        f"budget {a['budget_gib']} GiB. Each row ran in its own process; rows over budget were not run.",
        "",
        "| global batch | step | XLA peak (GiB) | peak RSS (GiB) | compile (s) | s/step | s/example | vs plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    plain = {r["batch"]: r for r in result["rows"] if r.get("chunk") == 0 and r.get("ran")}
    for r in result["rows"]:
        name = "plain" if r["chunk"] == 0 else f"GradCache c={r['chunk']}"
        if "error" in r:
            lines.append(f"| {r['batch']} | {name} | error: {r['error']} | | | | | |")
            continue
        ran = r.get("ran")
        ratio = ""
        if ran and r["chunk"] and r["batch"] in plain:
            ratio = f"{r['seconds_per_example'] / plain[r['batch']]['seconds_per_example']:.2f}x"
        lines.append(
            f"| {r['batch']} | {name} | {r['xla_peak_gib']:.1f} | {r['peak_rss_gib']:.1f} | {r['compile_s']:.0f} | "
            f"{r['seconds_per_step']:.1f} | {r['seconds_per_example']:.3f} | {ratio} |"
            if ran
            else f"| {r['batch']} | {name} | {r['xla_peak_gib']:.1f} | "
            f"not run: {r['predicted_peak_gib']:.1f} predicted > "
            f"{r['limit_gib']:.1f} | {r['compile_s']:.0f} | | | |"
        )
    ab = result.get("same_process_ab")
    if ab and "error" not in ab:
        lines += [
            "",
            f"Same process, alternating, {ab['rounds']} rounds at batch {ab['batch']}: plain "
            f"{ab['plain_s_per_step']:.1f} s/step, GradCache c={ab['chunk']} {ab['grad_cache_s_per_step']:.1f} "
            f"s/step: **{ab['grad_cache_over_plain']:.2f}x** (load average {ab['load_avg'][0]:.1f}).",
        ]
    elif ab:
        lines += ["", f"Same-process A/B: error {ab['error']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,128,512", help="global batch sizes (queries)")
    ap.add_argument("--chunk", type=int, default=32, help="GradCache rows per chunk per device")
    ap.add_argument("--extra-chunks", default="8", help="more chunk sizes, run at the smallest batch only")
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--passage-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    ap.add_argument("--budget-gib", type=float, default=24.0, help="run a configuration only if it fits this")
    ap.add_argument("--rng-impl", default="threefry2x32", help="dropout PRNG (train.rng_impl)")
    ap.add_argument("--out", default=str(RESULTS), help="results path without extension")
    ap.add_argument(
        "--ab-rounds",
        type=int,
        default=3,
        help="plain vs GradCache alternated in one process at the smallest batch (0 = skip)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ab-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker or args.ab_worker:
        print(json.dumps(ab_worker(args) if args.ab_worker else worker(args)))
        return

    batches = [int(b) for b in args.batches.split(",")]
    configs = [(b, c) for b in batches for c in (0, args.chunk)]
    configs += [(batches[0], int(c)) for c in args.extra_chunks.split(",") if c and int(c) != args.chunk]
    print(f"CPU: {cpu_model()}", flush=True)
    rows = []
    for batch, chunk in configs:
        row = run_config(args, batch, chunk)
        rows.append(row)
        print(json.dumps(row), flush=True)
    ab = None
    if args.ab_rounds:
        ab = run_config(args, batches[0], args.chunk, "--ab-worker")
        print(json.dumps(ab), flush=True)
    result = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "same_process_ab": ab,
        "args": {
            **{k: v for k, v in vars(args).items() if k not in ("worker", "ab_worker", "batch")},
            "model": "all-MiniLM-L6-v2",
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from jdr.io import atomic_write

    with atomic_write(out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with atomic_write(out.with_suffix(".md")) as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
