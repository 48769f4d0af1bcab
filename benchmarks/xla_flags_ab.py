"""XLA:CPU flag A/B: which library runs jdr's dots under each flag set, and how fast, interleaved in one run.

Each (flag set, workload) runs in its own child process (XLA_FLAGS are read once, at backend start), and the
flag sets alternate round by round (A, B, C, A, B, C, ...), so a machine whose load drifts hurts every side
alike; the summary is the median over rounds of each child's median time. A flag this jaxlib does not know
aborts the child: it is reported as "rejected", not silently ignored.

Workloads:
  matmul-float32 / matmul-bfloat16   one [64, 256, 384] @ [384, 1536] dot (MiniLM's FFN-in shape, batch 64 at
                                     256 tokens), float32 accumulation, as jdr's `_dense` computes it
  encode-float32 / encode-bfloat16   `encode_texts` of the first 64 SciFact passages at 256 tokens, batch 64
                                     (one compiled bucket; all-MiniLM-L6-v2)

For every child it also records where XLA put the dots of the compiled program (YNNPACK / XNNPACK / oneDNN
fusions, or XLA's own dot emitter): the count of each in the optimised HLO.

    python benchmarks/xla_flags_ab.py --workloads matmul-float32,matmul-bfloat16 --rounds 5
    python benchmarks/xla_flags_ab.py --workloads encode-float32 --configs default,no_ynn,onednn --rounds 3

Writes benchmarks/results/xla_flags_ab.{json,md} (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from _common import RESULTS, cpu_model

# name -> XLA_FLAGS. Flag names checked against jaxlib 0.10.2 (`strings libjax_common.so`) and XLA's
# xla/debug_options_flags.cc; the defaults there: xla_cpu_use_xnnpack=true, ynn fusion types = individual_dot.
CONFIGS = {
    "default": "",
    "no_ynn": "--xla_cpu_experimental_ynn_fusion_type=",  # dots back to XLA's own emitter (Eigen / tiled)
    "no_ynn_no_xnn": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false",
    "ynn_dot_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise,+reduce",
    "xnn_dot": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type=dot",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type=",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot --xla_cpu_experimental_ynn_fusion_type=",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "opt_fast_runtime": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "two_devices": "--xla_force_host_platform_device_count=2",
    "no_ynn_two_devices": "--xla_cpu_experimental_ynn_fusion_type= --xla_force_host_platform_device_count=2",
}
# What marks each library's work in the optimised HLO text.
BACKENDS = {
    "ynnpack": r'"kind":"__ynn_fusion"',
    "xnnpack": r'"kind":"__xnn_fusion"',
    "onednn": r'__onednn\$|"kind":"__onednn_fusion"',
    "xla_dot": r"= [a-z0-9]+\[[0-9,]*\]\{[0-9,]*\} dot\(",
}


def dot_backends(hlo_text: str) -> dict[str, int]:
    """How many fusions / custom calls / plain dots of each library the optimised HLO holds (dots inside a
    library fusion's body are not counted as XLA's own: only ENTRY-level and non-library-fusion bodies count)."""
    counts = {name: len(re.findall(pattern, hlo_text)) for name, pattern in BACKENDS.items() if name != "xla_dot"}
    # A library fusion's body also holds a `dot(`; count XLA's own dots as total dots minus library fusions.
    total_dots = len(re.findall(BACKENDS["xla_dot"], hlo_text))
    counts["xla_dot"] = max(0, total_dots - counts["ynnpack"] - counts["xnnpack"] - counts["onednn"])
    return counts


def timed_calls(call, timed: int) -> dict:
    """Wall seconds of each of `timed` calls, and the process's CPU seconds (user, sys: all threads) and minor page
    faults per call over them: CPU time is the steadier number on a machine shared with other jobs."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": times,
        "user_s_per_call": (after.ru_utime - before.ru_utime) / timed,
        "sys_s_per_call": (after.ru_stime - before.ru_stime) / timed,
        "minor_faults_per_call": (after.ru_minflt - before.ru_minflt) / timed,
    }


def child_matmul(dtype: str, timed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    dt = jnp.dtype(dtype)
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((64, 256, 384)), dt)
    w = jnp.asarray(r.standard_normal((384, 1536)), dt)
    fn = jax.jit(lambda x, w: jax.lax.dot_general(x, w, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32))
    compiled = fn.lower(x, w).compile()
    compiled(x, w).block_until_ready()
    out = timed_calls(lambda: compiled(x, w).block_until_ready(), timed)
    return {**out, "flops": 2 * 64 * 256 * 384 * 1536, "backends": dot_backends(compiled.as_text())}


def child_encode(dtype: str, timed: int) -> dict:
    import dataclasses
    import resource

    from jdr.malloc import tune_malloc

    tune_malloc()  # as the `jdr` command does, before jax allocates (acts only with JDR_MALLOC=heap)
    import jax
    import numpy as np

    from jdr.data.beir import load_corpus, resolve_dataset
    from jdr.models import hf, inference

    params, spec, tok = hf.load(hf.find_minilm(), passage_max_length=256)
    spec = dataclasses.replace(spec, dtype=dtype)
    corpus = load_corpus(resolve_dataset("scifact") / "corpus.jsonl")
    texts = [corpus.passage(i) for i in range(64)]
    kw = dict(tower="passage", max_length=256, batch_size=64, progress=False)
    inference.encode_texts(params, spec, tok, texts, **kw)  # compile
    out = timed_calls(lambda: inference.encode_texts(params, spec, tok, texts, **kw), timed)
    fn, replicated, _ = inference._compiled(tuple(jax.local_devices()), spec, "query")
    ids = np.zeros((64, 256), np.int32)
    hlo = fn.lower(jax.device_put(params, replicated), ids, ids).compile().as_text()
    return {
        **out,
        "backends": dot_backends(hlo),
        "devices": jax.local_device_count(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(config: str, workload: str, timed: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + CONFIGS[config]).strip())
    out = subprocess.run(
        [sys.executable, __file__, "--child", workload, f"--timed={timed}"], env=env, capture_output=True, text=True
    )
    if out.returncode:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"rejected": f"rc {out.returncode}: {tail[:300]}"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["median_s"] = statistics.median(result["seconds"])
    return result


def write_md(result: dict, stem: str) -> None:
    lines = [
        f"# XLA:CPU flag A/B ({', '.join(result['workloads'])})",
        "",
        f"CPU: {result['cpu']}. {result['rounds']} interleaved rounds, {result['timed']} timed calls per child "
        f"after a warm-up; median over rounds of each child's median. Command: `{result['command']}`"
        + (f" Note: {result['note']}" if result.get("note") else ""),
        "",
    ]
    for w in result["workloads"]:
        lines += [
            f"## {w}",
            "",
            "| config | XLA_FLAGS | median ms | per round ms | vs default | fastest call ms | "
            "fastest vs default | CPU s per call (user + sys) | dots: ynn / xnn / onednn / xla |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        base = result["summary"][w].get("default")
        fastest = {
            c: min(min(r[w][c].get("seconds") or [float("inf")]) for r in result["per_round"])
            for c in result["configs"]
        }
        for c in result["configs"]:
            runs = [r[w][c] for r in result["per_round"]]
            rejected = next((r["rejected"] for r in runs if "rejected" in r), None)
            if rejected:
                lines.append(f"| {c} | `{CONFIGS[c]}` | rejected | | | | | | {rejected} |")
                continue
            med = result["summary"][w][c]
            b = runs[-1]["backends"]
            per_round = ", ".join(f"{r['median_s'] * 1e3:.0f}" for r in runs)
            user = [r["user_s_per_call"] for r in runs if "user_s_per_call" in r]
            sys_ = [r["sys_s_per_call"] for r in runs if "sys_s_per_call" in r]
            cpu_text = f"{statistics.median(user):.3f} + {statistics.median(sys_):.3f}" if user else "—"
            lines.append(
                f"| {c} | `{CONFIGS[c] or '(none)'}` | {med * 1e3:.1f} | "
                f"{per_round} | "
                f"{base / med:.2f}x | {fastest[c] * 1e3:.1f} | {fastest['default'] / fastest[c]:.2f}x | {cpu_text} | "
                f"{b['ynnpack']} / {b['xnnpack']} / {b['onednn']} / {b['xla_dot']} |"
                if base
                else f"| {c} | `{CONFIGS[c]}` | {med * 1e3:.1f} | | | | | | |"
            )
        lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))


def rewrite(stem: str) -> None:
    """Re-render results/<stem>.md from its .json (after a format change)."""
    write_md(json.loads((RESULTS / f"{stem}.json").read_text()), stem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs",
        default="default,no_ynn,xnn_dot,onednn,onednn_custom_call,fast_math",
        help=f"comma list of {', '.join(CONFIGS)}",
    )
    ap.add_argument("--workloads", default="matmul-float32,matmul-bfloat16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timed", type=int, default=5, help="timed calls per child after one warm-up")
    ap.add_argument("--out", default="xla_flags_ab", help="results file stem under benchmarks/results/")
    ap.add_argument("--note", default="", help="a line for the results file (e.g. 'under load')")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, dtype = args.child.split("-")
        print(json.dumps((child_matmul if kind == "matmul" else child_encode)(dtype, args.timed)))
        return
    configs, workloads = args.configs.split(","), args.workloads.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown} (known: {', '.join(CONFIGS)})")
    result = {
        "cpu": cpu_model(),
        "configs": configs,
        "workloads": workloads,
        "rounds": args.rounds,
        "timed": args.timed,
        "note": args.note,
        "per_round": [],
        "command": "python benchmarks/xla_flags_ab.py " + " ".join(sys.argv[1:]),
    }
    for i in range(args.rounds):
        rnd = {w: {} for w in workloads}
        for w in workloads:
            for c in configs:
                rnd[w][c] = run_child(c, w, args.timed)
                r = rnd[w][c]
                print(
                    f"round {i} {w} {c}: "
                    + (r["rejected"] if "rejected" in r else f"{r['median_s'] * 1e3:.1f} ms, dots {r['backends']}"),
                    flush=True,
                )
        result["per_round"].append(rnd)
    result["summary"] = {
        w: {
            c: statistics.median(r[w][c]["median_s"] for r in result["per_round"])
            for c in configs
            if all("median_s" in r[w][c] for r in result["per_round"])
        }
        for w in workloads
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_md(result, args.out)
    print(f"wrote {RESULTS / args.out}.md")


if __name__ == "__main__":
    main()
