"""Per-op profile of one encode batch: where XLA:CPU spends the time of all-MiniLM-L6-v2 on 64 x 256 tokens.

Runs the compiled encode program (the one `encode_texts` uses) under `jax.profiler` with XLA's per-thunk trace
events on (`--xla_cpu_enable_xprof_traceme=true`, added to XLA_FLAGS), sums each thunk's time over `--steps`
batches, and sorts every thunk of the optimised HLO into a category by what its fused computation holds:

  GEMM (dense layers)          dots without batch dimensions: Q, K, V, FFN in (each alone)
  GEMM + residual + layernorm  a dense dot fused with the residual add and LayerNorm (attention / FFN output)
  attention (... fused)        batched dots with the softmax between them in one fusion (YNNPACK does this)
  attention dots / softmax     the same when they are separate thunks
  layernorm, GELU              standalone (XLA expands erf into exp-based elementwise code)
  copies / transposes          transposes to / from heads-first (with the bias add / scale fused in)
  bias adds / broadcasts, embeddings (gather), other (pooling, normalize)

and which library ran each dot (YNNPACK `__ynn_fusion`, XNNPACK, oneDNN, or XLA's own dot = Eigen).
Thunks can overlap (XLA runs independent thunks concurrently), so the table gives each category's share of
the summed thunk time next to the measured wall time per batch.

    python benchmarks/profile_encode.py                       # float32, 3 batches
    python benchmarks/profile_encode.py --dtype bfloat16
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/profile_encode.py --out profile_encode_2dev

Writes benchmarks/results/profile_encode.{json,md} (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

from _common import RESULTS, cpu_model


def enable_thunk_trace() -> None:
    """Turn on XLA:CPU's per-thunk trace events; call before jax starts its backend (the first computation)."""
    if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()


CATEGORIES = (
    "GEMM (dense layers)",
    "GEMM + residual + layernorm",
    "GEMM + GELU",
    "attention (QK^T, softmax, PV fused)",
    "attention dots",
    "softmax",
    "layernorm",
    "GELU",
    "copies / transposes",
    "bias adds / broadcasts",
    "embeddings (gather)",
    "other (pooling, normalize)",
)
ELEMENTWISE = {
    "add",
    "subtract",
    "multiply",
    "divide",
    "maximum",
    "minimum",
    "select",
    "compare",
    "convert",
    "broadcast",
    "bitcast",
    "reshape",
    "parameter",
    "constant",
    "and",
    "or",
    "not",
    "negate",
    "iota",
}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> tuple[dict, str]:
    """`({computation: [(name, opcode, rest_of_line)]}, entry_name)` from optimised HLO text."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith(" "):
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append((m.group(1), m.group(3), m.group(4)))
    return comps, entry


def _called(rest: str) -> list[str]:
    return re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", rest)


def ops_inside(comps: dict, name: str, seen=None) -> list[tuple[str, str]]:
    """Every (opcode, rest) in computation `name` and the computations it calls."""
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return []
    seen.add(name)
    out = []
    for _, opcode, rest in comps[name]:
        out.append((opcode, rest))
        for c in _called(rest):
            out += ops_inside(comps, c, seen)
    return out


def classify(opcode: str, rest: str, comps: dict) -> tuple[str, str | None]:
    """(category, dot library or None) of one ENTRY instruction, from the ops its fused computation holds."""
    inner = [(opcode, rest)] + [o for c in _called(rest) for o in ops_inside(comps, c)]
    kinds = {o for o, _ in inner}
    if "dot" in kinds or "convolution" in kinds:
        library = (
            "YNNPACK"
            if "__ynn_fusion" in rest
            else "XNNPACK"
            if "__xnn_fusion" in rest
            else "oneDNN"
            if "onednn" in rest.lower()
            else "XLA (Eigen)"
        )
        if any(o == "dot" and "lhs_batch_dims" in r for o, r in inner):
            return ("attention (QK^T, softmax, PV fused)" if "exponential" in kinds else "attention dots"), library
        if "rsqrt" in kinds:
            return "GEMM + residual + layernorm", library
        if kinds & {"erf", "tanh", "exponential"}:
            return "GEMM + GELU", library
        return "GEMM (dense layers)", library
    if opcode == "custom-call":
        return ("GEMM (dense layers)" if "matmul" in rest.lower() else "other"), "oneDNN" if "onednn" in rest else None
    if "exponential" in kinds and "reduce" in kinds:
        return "softmax", None
    if "rsqrt" in kinds:
        return "layernorm", None
    if kinds & {"erf", "tanh", "exponential"}:  # XLA expands erf into exp-based elementwise code
        return "GELU", None
    if kinds & {"transpose", "copy"}:
        return "copies / transposes", None
    if "gather" in kinds:
        return "embeddings (gather)", None
    if kinds <= ELEMENTWISE:
        return "bias adds / broadcasts", None
    return "other (pooling, normalize)", None


def thunk_times(trace_dir: str, names: set[str]) -> dict[str, float]:
    """Summed seconds per HLO instruction name over every trace event named after one."""
    from jax.profiler import ProfileData

    total = collections.Counter()
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for ev in line.events:
                    if ev.name in names:
                        total[ev.name] += ev.duration_ns / 1e9
    return total


def build_encode(batch: int, length: int, dtype: str):
    """The compiled encode program `encode_texts` runs, on the first `batch` SciFact passages cut at `length`
    tokens: `(compiled, call_args, devices)`; `compiled(*call_args)` encodes the batch once."""
    import dataclasses

    import jax
    import numpy as np

    from jdr.data.beir import load_corpus, resolve_dataset
    from jdr.models import hf, inference
    from jdr.models.tokenize import pad_ragged, ragged, token_ids

    params, spec, tok = hf.load(hf.find_minilm(), passage_max_length=length)
    spec = dataclasses.replace(spec, dtype=dtype)
    corpus = load_corpus(resolve_dataset("scifact") / "corpus.jsonl")
    texts = [corpus.passage(i) for i in range(batch)]
    tokens, offsets = ragged(token_ids(tok, texts, length))
    ids, mask = pad_ragged(tokens, offsets, np.arange(batch), length)
    devices = tuple(jax.local_devices())
    fn, replicated, rows = inference._compiled(devices, spec, "query")
    placed = jax.device_put(params, replicated)
    ids, mask = jax.device_put((ids, mask), rows)
    return fn.lower(placed, ids, mask).compile(), (placed, ids, mask), devices


def traced_thunk_times(run, steps: int, names: set[str]) -> tuple[list[float], dict[str, float]]:
    """Run `run()` (which blocks until done) `steps` times under `jax.profiler`: (wall seconds of each call,
    summed seconds per thunk named in `names`). Needs `enable_thunk_trace()` before jax started."""
    import jax

    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(steps):
            start = time.perf_counter()
            run()
            walls.append(time.perf_counter() - start)
        jax.profiler.stop_trace()
        times = thunk_times(trace_dir, names)
    if not times:
        sys.exit("no per-thunk trace events found: does this jaxlib honour --xla_cpu_enable_xprof_traceme?")
    return walls, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="profiled batches (after one warm-up)")
    ap.add_argument("--note", default="", help="a line for the results file (e.g. 'under load')")
    ap.add_argument("--out", default="profile_encode")
    args = ap.parse_args()
    enable_thunk_trace()

    compiled, call_args, devices = build_encode(args.batch, args.length, args.dtype)
    hlo = compiled.as_text()
    comps, entry = parse_hlo(hlo)
    category, library = {}, {}
    for name, opcode, rest in comps[entry]:
        category[name], library[name] = classify(opcode, rest, comps)

    compiled(*call_args).block_until_ready()  # warm-up
    walls, times = traced_thunk_times(lambda: compiled(*call_args).block_until_ready(), args.steps, set(category))

    per_step = {n: t / args.steps for n, t in times.items()}
    total = sum(per_step.values())
    by_cat = collections.Counter()
    by_lib = collections.Counter()
    count = collections.Counter()
    for n, t in per_step.items():
        by_cat[category[n]] += t
        count[category[n]] += 1
        if library[n]:
            by_lib[library[n]] += t
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[:12]
    flops = compiled.cost_analysis()
    flops = float((flops[0] if isinstance(flops, (list, tuple)) else flops)["flops"])
    wall = statistics.median(walls)
    result = {
        "cpu": cpu_model(),
        "command": "python benchmarks/profile_encode.py " + " ".join(sys.argv[1:]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "devices": len(devices),
        "args": vars(args),
        "wall_s_per_batch": walls,
        "thunk_s_per_batch": total,
        "by_category_s": dict(by_cat),
        "by_library_s": dict(by_lib),
        "top": top,
        "flops_per_batch": flops,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Per-op profile of one encode batch ({args.dtype}, {args.batch} x {args.length}, {len(devices)} "
        f"device{'s' if len(devices) > 1 else ''})",
        "",
        f"CPU: {result['cpu']}. Command: `{result['command']}`; XLA_FLAGS=`{result['xla_flags']}`. "
        + (f"{args.note} " if args.note else "")
        + f"Wall per batch (median of {args.steps}, under the profiler): {wall * 1e3:.0f} ms = "
        f"{flops / wall / 1e9:.0f} GFLOP/s by XLA's count ({flops / 1e9:.0f} GFLOP); summed thunk time "
        f"{total * 1e3:.0f} ms (thunks may overlap).",
        "",
        "| category | thunks | ms per batch | % of thunk time |",
        "|---|---|---|---|",
    ]
    for c in CATEGORIES:
        if by_cat.get(c):
            lines.append(f"| {c} | {count[c]} | {by_cat[c] * 1e3:.1f} | {100 * by_cat[c] / total:.1f} |")
    lines += [
        "",
        "Dots by library: "
        + ", ".join(f"{k} {v * 1e3:.0f} ms ({100 * v / total:.0f} %)" for k, v in by_lib.most_common()),
        "",
        "Top thunks:",
        "",
        "| thunk | category | library | ms per batch |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {category[n]} | {library[n] or ''} | {t * 1e3:.1f} |" for n, t in top]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
