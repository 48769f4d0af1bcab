"""Per-op profile of one encode batch and one train step, jdr vs sentence-transformers, in shared categories.

For each `--workloads` (encode, train) x `--dtypes` (float32, bfloat16), each side runs in its own child process
(jdr in the `jdr` command's environment, `_common.jdr_env`: mimalloc; the peer in this one): build, one warm-up
call, `--encode-steps` / `--train-steps` timed calls without the profiler, then as many under it.

  encode  jdr: the compiled encode program `encode_texts` runs (`profile_encode.build_encode`), `--encode-batch`
          SciFact passages padded to `--passage-len`; peer: sentence-transformers' forward on the same passages,
          pre-tokenized (padded to the longest, cut at `--passage-len`) under `torch.inference_mode`; bfloat16:
          the model cast (as `encode.py`).
  train   jdr: `train_step.build_jdr_step` (InfoNCE, AdamW, dropout on); peer: `train_step.build_st_step`
          (MultipleNegativesRankingLoss, AdamW; bfloat16: autocast) on the same random batch, `--train-batch`
          queries x (1 + `--negatives`) passages, `--query-len` / `--passage-len` tokens.

What is summed. jdr: `jax.profiler` with XLA's per-thunk trace events (`--xla_cpu_enable_xprof_traceme`); each
top-level thunk's time, categorised from its fused HLO (`profile_encode.classify`) and its ops' `op_name` scopes
(Flax module paths). Thunks can overlap (XLA runs independent thunks concurrently), so shares are of summed
thunk time. Peer: `torch.profiler` (CPU activities), every op's self CPU time, categorised by its name or the
name of the op / record_function scope it runs inside (key_averages gives the top ops).

Shared categories (jdr thunk -> peer aten op):
  GEMM            thunks with a dot and no batch dims, incl. the dot+residual+LayerNorm and dot+GELU fusions
                  -> addmm / mm / linear / matmul / mkldnn (forward and backward)
  attention       batched dots (+ the softmax XLA fuses with them) -> scaled_dot_product_attention and its
                  backward, bmm / baddbmm (in MiniLM only attention uses batched matmuls)
  softmax, layernorm, GELU  standalone thunks (or scoped LayerNorm / `intermediate`) -> _softmax, log_softmax,
                  native_layer_norm, gelu and their backward ops
  copies / transposes  transpose / copy thunks -> copy_, _to_copy, contiguous, clone, cat, views
  embedding       gathers / scatters, `*_embeddings` scopes -> embedding, index_select, embedding_dense_backward
  dropout (incl. RNG)  `Dropout_*` / threefry scopes -> ops under aten::dropout (bernoulli_, div_, mul; its
                  backward is a plain mul and lands in elementwise)
  optimizer       train-step code outside the model's jvp / transpose (AdamW, gradient clip and all-reduce)
                  -> ops under `Optimizer.step` / `Optimizer.zero_grad`
  allocator       jdr: not separable (XLA allocates inside its thunks); peer: aten::empty / empty_strided /
                  empty_like / resize_ self time (allocation inside a kernel's own code stays in that kernel)
  elementwise / other  the rest (bias adds, converts, loss, pooling, autograd bookkeeping)

    python benchmarks/profile_ops.py --note "idle machine"                      # full size, both dtypes / workloads
    python benchmarks/profile_ops.py --encode-batch 4 --train-batch 4 --query-len 16 --passage-len 32 \\
        --out profile_ops_smoke                                                   # smoke run

Writes benchmarks/results/profile_ops.{json,md} (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
import time

from _common import RESULTS, cpu_model, run_child, side_env
from profile_encode import _called, classify, enable_thunk_trace, ops_inside, parse_hlo, traced_thunk_times

CATEGORIES = (
    "GEMM",
    "attention",
    "softmax",
    "layernorm",
    "GELU",
    "copies / transposes",
    "embedding",
    "dropout (incl. RNG)",
    "optimizer",
    "allocator",
    "elementwise / other",
)
FINE_TO_SHARED = {  # profile_encode.classify's categories
    "GEMM (dense layers)": "GEMM",
    "GEMM + residual + layernorm": "GEMM",
    "GEMM + GELU": "GEMM",
    "attention (QK^T, softmax, PV fused)": "attention",
    "attention dots": "attention",
    "softmax": "softmax",
    "layernorm": "layernorm",
    "GELU": "GELU",
    "copies / transposes": "copies / transposes",
    "embeddings (gather)": "embedding",
}
TRACED = ("jit(", "pmap(", "xla_pmap(")  # how op_names of traced ops start (arguments are named otherwise)
TORCH_SCOPES = (  # a match anywhere above an op (or on it) decides its category, in this order
    ("Optimizer.step", "optimizer"),
    ("Optimizer.zero_grad", "optimizer"),
    ("scaled_dot_product", "attention"),
    ("aten::dropout", "dropout (incl. RNG)"),
    ("aten::native_dropout", "dropout (incl. RNG)"),
)
TORCH_OPS = {  # else the nearest op (the op itself first) named here decides
    **dict.fromkeys(("empty", "empty_strided", "empty_like", "resize_"), "allocator"),
    **dict.fromkeys(("addmm", "mm", "linear", "matmul", "mkldnn_linear", "_mkldnn_matmul"), "GEMM"),
    **dict.fromkeys(("bmm", "baddbmm"), "attention"),
    **dict.fromkeys(("softmax", "_softmax", "_softmax_backward_data", "log_softmax", "_log_softmax"), "softmax"),
    "_log_softmax_backward_data": "softmax",
    **dict.fromkeys(("layer_norm", "native_layer_norm", "native_layer_norm_backward"), "layernorm"),
    **dict.fromkeys(("gelu", "gelu_backward"), "GELU"),
    **dict.fromkeys(("embedding", "embedding_backward", "embedding_dense_backward", "index_select"), "embedding"),
    **dict.fromkeys(
        ("copy_", "_to_copy", "to", "contiguous", "clone", "cat", "stack", "transpose", "permute", "t", "view"),
        "copies / transposes",
    ),
    **dict.fromkeys(("reshape", "_unsafe_view", "expand", "as_strided", "select", "slice"), "copies / transposes"),
}


def torch_category(chain: list[str]) -> str:
    """The shared category of a profiled torch op, from `chain`: its name, then its parents' up to the root."""
    for needle, cat in TORCH_SCOPES:
        if any(needle in name for name in chain):
            return cat
    for name in chain:
        op = name.removeprefix("aten::")
        if name.startswith("aten::") and op in TORCH_OPS:
            return TORCH_OPS[op]
        if "mkldnn" in name or "onednn" in name:
            return "GEMM"
    return "elementwise / other"


def scope_category(op_name: str, train: bool) -> str | None:
    """The category an XLA op's `op_name` (its traced path: jit / Flax module scopes) implies, or None if it says
    nothing (names of arguments, such as `flat_args[3]`, say nothing)."""
    if not op_name.startswith(TRACED):
        return None
    if "Dropout_" in op_name or "threefry" in op_name:
        return "dropout (incl. RNG)"
    if train and "jvp(" not in op_name:  # the step's own code after the gradient: AdamW, clip, all-reduce
        return "optimizer"
    if "LayerNorm" in op_name:
        return "layernorm"
    if "/intermediate/" in op_name:
        return "GELU"
    if "_embeddings/" in op_name:
        return "embedding"
    return None


def jdr_category(opcode: str, rest: str, comps: dict, train: bool) -> str:
    """The shared category of one top-level thunk: dots by shape (GEMM / attention), else the scope most of its
    traced ops come from, else (most say nothing) what its fused ops compute (`profile_encode.classify`)."""
    fine, _ = classify(opcode, rest, comps)
    shared = FINE_TO_SHARED.get(fine, "elementwise / other")
    if shared in ("GEMM", "attention"):
        return shared
    inner = [rest] + [r for c in _called(rest) for _, r in ops_inside(comps, c)]
    names = [m for r in inner for m in re.findall(r'op_name="([^"]*)"', r) if m.startswith(TRACED)]
    votes = collections.Counter(scope_category(n, train) for n in names)
    top = votes.most_common(1)[0][0] if votes else None
    return top or shared


def _summary(walls: list[float], profiled: list[float], by_cat: dict, top: list, steps: int, **extra) -> dict:
    """One side's result: walls (s) and per-step ms by category, summed and of the top ops."""
    return {
        "wall_s": walls,
        "wall_profiled_s": profiled,
        "by_category_ms": {c: by_cat[c] * 1e3 / steps for c in CATEGORIES if by_cat.get(c)},
        "summed_ms": sum(by_cat.values()) * 1e3 / steps,
        "top_ms": [(n, c, t * 1e3 / steps) for n, c, t in top],
        **extra,
    }


def _walls(run, steps: int) -> list[float]:
    """Seconds of each of `steps` calls of `run()` (which blocks until done)."""
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        walls.append(time.perf_counter() - start)
    return walls


def _timed(run, steps: int) -> list[float]:
    """`_walls` after one warm-up call (compiles / first-touch allocations)."""
    run()
    return _walls(run, steps)


def child_jdr(args) -> dict:
    """Profile jdr's encode batch or train step in this process."""
    enable_thunk_trace()
    from jdr.malloc import tune_malloc

    tune_malloc()  # what the `jdr` command does first (acts only with JDR_MALLOC=heap)
    import jax

    train = args.workload == "train"
    if train:
        from train_step import build_jdr_step, random_batch

        from jdr.models import hf

        model_dir = hf.find_minilm()
        batch = random_batch(args, hf.load(model_dir)[1].bert.vocab_size)
        step, state, sharded, rng = build_jdr_step(args, model_dir, batch)
        compiled = step.lower(state, sharded, rng).compile()
        holder = {"state": state}

        def run():
            holder["state"], metrics = compiled(holder["state"], sharded, rng)
            jax.block_until_ready(metrics["loss"])

        shape = f"{args.batch} x {args.query_len} + {args.batch * (1 + args.negatives)} x {args.passage_len}"
    else:
        from profile_encode import build_encode

        compiled, call_args, _ = build_encode(args.batch, args.passage_len, args.dtype)

        def run():
            compiled(*call_args).block_until_ready()

        shape = f"{args.batch} x {args.passage_len}"
    comps, entry = parse_hlo(compiled.as_text())
    category = {name: jdr_category(op, rest, comps, train) for name, op, rest in comps[entry]}
    walls = _timed(run, args.steps)
    profiled, times = traced_thunk_times(run, args.steps, set(category))
    by_cat = collections.Counter()
    for name, t in times.items():
        by_cat[category[name]] += t
    top = [(n, category[n], t) for n, t in collections.Counter(times).most_common(8)]
    return _summary(walls, profiled, by_cat, top, args.steps, shape=shape, devices=len(jax.local_devices()))


def child_peer(args) -> dict:
    """Profile sentence-transformers' encode batch or train step in this process (torch.profiler, CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if args.workload == "train":
        from train_step import build_st_step, random_batch

        from jdr.models import hf

        model_dir = hf.find_minilm()
        batch = random_batch(args, hf.load(model_dir)[1].bert.vocab_size)
        run = build_st_step(args, model_dir, batch)
        shape = f"{args.batch} x {args.query_len} + {args.batch * (1 + args.negatives)} x {args.passage_len}"
    else:
        from encode import load_texts, st_model

        model = st_model(args.passage_len, args.dtype).eval()
        features = model.tokenize(load_texts(None, args.batch))

        def run():
            with torch.inference_mode():
                model(dict(features))

        shape = " x ".join(map(str, features["input_ids"].shape))
    walls = _timed(run, args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = _walls(run, args.steps)
    by_cat, by_op = collections.Counter(), collections.Counter()
    for ev in prof.events():
        chain, up = [ev.name], ev.cpu_parent
        while up is not None:
            chain.append(up.name)
            up = up.cpu_parent
        cat = torch_category(chain)
        by_cat[cat] += ev.self_cpu_time_total / 1e6
        by_op[(ev.name, cat)] += ev.self_cpu_time_total / 1e6
    top = [(n, c, t) for (n, c), t in by_op.most_common(8)]
    return _summary(
        walls, profiled, by_cat, top, args.steps, shape=shape, torch=torch.__version__, threads=torch.get_num_threads()
    )


def markdown(result: dict) -> str:
    """The results file: per workload x dtype, each category's ms per batch / step and share on both sides."""
    a = result["args"]
    lines = [
        "# Per-op profile: jdr vs sentence-transformers (one encode batch, one train step)",
        "",
        f"CPU: {result['cpu']}. Command: `{result['command']}`." + (f" {a['note']}" if a.get("note") else ""),
        f"jdr side: {result['env']['jdr']}; peer: {result['env']['peer']}. Each side in its own process: one "
        f"warm-up call, {a['encode_steps']} encode batches / {a['train_steps']} train steps timed without the "
        "profiler, as many under it. ms are per batch / step; jdr's are summed XLA thunk times (thunks may "
        "overlap), the peer's summed torch self CPU times. Category mapping: the module docstring of "
        "benchmarks/profile_ops.py. allocator: XLA allocates inside its thunks (not separable); torch's row is "
        "aten::empty / empty_strided / empty_like / resize_ self time.",
    ]
    for key, sides in result["runs"].items():
        jdr, peer = sides.get("jdr"), sides.get("peer")
        lines += ["", f"## {key}", ""]
        for label, s in (("jdr", jdr), ("peer", peer)):
            if s:
                lines.append(
                    f"- {label} ({s['shape']}): wall {statistics.median(s['wall_s']) * 1e3:.0f} ms without the "
                    f"profiler, {statistics.median(s['wall_profiled_s']) * 1e3:.0f} ms under it; summed op time "
                    f"{s['summed_ms']:.0f} ms"
                )
            else:
                lines.append(f"- {label}: not run ({sides.get(label + '_skipped', 'skipped')})")
        lines += ["", "| category | jdr ms | jdr % | peer ms | peer % |", "|---|---|---|---|---|"]
        for c in CATEGORIES:
            cells = []
            for s in (jdr, peer):
                ms = s["by_category_ms"].get(c, 0.0) if s else None
                cells += ["—", "—"] if ms is None else [f"{ms:.1f}", f"{100 * ms / s['summed_ms']:.1f}"]
            if c == "allocator" and jdr:
                cells[:2] = ["in thunks", "—"]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        for label, s in (("jdr", jdr), ("peer", peer)):
            if s:
                lines.append(f"\n{label} top ops: " + ", ".join(f"{n} [{c}] {t:.1f} ms" for n, c, t in s["top_ms"][:6]))
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse flags; as the parent, run each side of each workload x dtype in a child and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--workloads", default="encode,train")
    ap.add_argument("--encode-batch", type=int, default=64, help="passages in the encode batch")
    ap.add_argument("--train-batch", type=int, default=32, help="queries in the train step")
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--passage-len", type=int, default=256, help="passage tokens (train) / encode length")
    ap.add_argument("--encode-steps", type=int, default=2, help="batches timed, and as many profiled")
    ap.add_argument("--train-steps", type=int, default=1, help="steps timed, and as many profiled")
    ap.add_argument("--st-python", default=sys.executable, help="python with torch + sentence-transformers")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--note", default="", help="a line for the results file (e.g. the machine's load)")
    ap.add_argument("--out", default="profile_ops", help="results stem under benchmarks/results/")
    ap.add_argument("--child", choices=("jdr", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=("encode", "train"), help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.dropout = True
        print(json.dumps(child_jdr(args) if args.child == "jdr" else child_peer(args)))
        return
    dtypes, workloads = args.dtypes.split(","), args.workloads.split(",")
    if not set(dtypes) <= {"float32", "bfloat16"} or not set(workloads) <= {"encode", "train"}:
        ap.error(
            f"--dtypes {args.dtypes!r} / --workloads {args.workloads!r} (known: float32, bfloat16 / encode, train)"
        )
    from jdr.io import atomic_write

    result = {
        "cpu": cpu_model(),
        "command": "python benchmarks/profile_ops.py " + " ".join(sys.argv[1:]),
        "env": side_env(),
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "workload", "dtype", "batch", "steps")},
        "runs": {},
    }
    shared = [f"--negatives={args.negatives}", f"--query-len={args.query_len}", f"--passage-len={args.passage_len}"]
    for workload in workloads:
        for dtype in dtypes:
            encode = workload == "encode"
            argv = shared + [
                f"--workload={workload}",
                f"--dtype={dtype}",
                f"--batch={args.encode_batch if encode else args.train_batch}",
                f"--steps={args.encode_steps if encode else args.train_steps}",
            ]
            key, sides = f"{workload} {dtype}", {}
            for side, python in (("jdr", sys.executable), ("peer", args.st_python)):
                if side == "peer" and args.skip_peer:
                    continue
                try:
                    sides[side] = run_child(python, __file__, side, argv)
                except subprocess.CalledProcessError as e:
                    tail = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e)
                    print(f"{key} {side} failed:\n{e.stderr[-3000:]}", file=sys.stderr)
                    sides[f"{side}_skipped"] = tail
            result["runs"][key] = sides
            print(f"{key}: " + ", ".join(f"{s} {v['summed_ms']:.0f} ms" for s, v in sides.items() if "_" not in s))
    text = markdown(result)
    RESULTS.mkdir(exist_ok=True)
    with atomic_write(RESULTS / f"{args.out}.json") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    with atomic_write(RESULTS / f"{args.out}.md") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
