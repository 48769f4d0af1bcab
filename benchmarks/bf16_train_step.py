"""Where a bfloat16 train step's dots run: the compiled HLO of `train_step.py`'s jdr step, dot by dot.

Builds the step exactly as `train_step.py`'s jdr side does (`build_jdr_step`: all-MiniLM-L6-v2, InfoNCE, AdamW,
dropout on, pmapped over the local devices), compiles it and reads the optimised HLO: every `dot` with its phase
(forward = under `jvp(...)`, backward = under `transpose(...)` in its op_name metadata, other = outside the
gradient), the library that runs it (YNNPACK `__ynn_fusion`, or XLA's own dot = Eigen), its operand and output
dtypes and its FLOPs; every `convert` outside YNNPACK fusions (element counts by direction). With `--steps` it
also runs the step and reports the process's CPU seconds (user + sys) per step, a load-robust cost; with
`--profile` one more step runs under `jax.profiler` with XLA's per-thunk trace events, and the summed thunk time
is split into the same categories (shares; thunks may overlap).

Arms compare jdr trees in alternating child processes (each arm is a directory put first on PYTHONPATH, e.g. a
`git archive` of the commit before a change):

    python benchmarks/bf16_train_step.py                              # HLO table of this tree, both dtypes
    python benchmarks/bf16_train_step.py --arm before=/tmp/jdr_before --arm after=. --steps 2 --rounds 3
    python benchmarks/bf16_train_step.py --dtypes bfloat16 --profile --steps 1

Writes benchmarks/results/bf16_train_step.json and prints a markdown summary (`--out` to change the stem).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict, str]:
    """`({computation: [(name, type, opcode, rest)]}, entry)` from optimised HLO text."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith(" "):
                current = m.group(1)
                comps[current] = []
                entry = current if line.startswith("ENTRY") else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(m.groups())
    return comps, entry


def phase_of(rest: str) -> str | None:
    """backward (under AD's transpose), forward (under jvp) or other, from the op_name metadata; None if absent."""
    m = re.search(r'op_name="([^"]*)"', rest)
    if not m:
        return None
    return "backward" if "transpose(" in m.group(1) else "forward" if "jvp(" in m.group(1) else "other"


def _shape(dims: str) -> list[int]:
    return [int(d) for d in dims.split(",") if d]


def analyse(text: str) -> dict:
    """Per top-level instruction (a thunk): its library, phase and the dots / converts inside it."""
    comps, entry = parse_hlo(text)
    types = {c: {i[0]: i[1] for i in ins} for c, ins in comps.items()}

    def operand_types(comp: str, rest: str) -> list[tuple[str, str]]:
        """(dtype, dims) of each operand; optimised HLO names operands without their shapes."""
        args = rest.split(")", 1)[0]
        found = _ARRAY.findall(args)
        return found or [_ARRAY.search(types[comp][n]).groups() for n in re.findall(r"%([\w.\-]+)", args)]

    thunks = {}
    for name, typ, opcode, rest in comps[entry]:
        inner, todo, seen = [(entry, (name, typ, opcode, rest))], _CALLS.findall(rest), set()
        while todo:
            c = todo.pop()
            if c in seen or c not in comps:
                continue
            seen.add(c)
            for ins in comps[c]:
                inner.append((c, ins))
                todo += _CALLS.findall(ins[3])
        inner, where = [i for _, i in inner], [c for c, _ in inner]
        library = "YNNPACK" if "__ynn_fusion" in rest else "XLA"
        phases = [p for p in (phase_of(i[3]) for i in inner) if p]
        dots, converts = [], collections.Counter()
        for comp, (_, t, op, r) in zip(where, inner):
            if op == "dot":
                (odt, odims), (ldt, ldims), (rdt, rdims) = [_ARRAY.search(t).groups()] + operand_types(comp, r)[:2]
                contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", r)
                k = math.prod(_shape(ldims)[i] for i in _shape(contract.group(1))) if contract else 1
                dots.append(
                    {
                        "phase": phase_of(r) or (phases[0] if phases else "other"),
                        "dtypes": f"{ldt} x {rdt} -> {odt}",
                        "shapes": f"[{ldims}] x [{rdims}] -> [{odims}]",
                        "gflop": 2 * math.prod(_shape(odims)) * k / 1e9,
                    }
                )
            elif op == "convert" and library == "XLA":
                (odt, odims), src = _ARRAY.search(t).groups(), operand_types(comp, r)[:1]
                if src and src[0][0] != odt:
                    converts[f"{src[0][0]}->{odt}"] += math.prod(_shape(odims))
        thunks[name] = {
            "library": library,
            "phase": collections.Counter(phases).most_common(1)[0][0] if phases else "other",
            "dots": dots,
            "converts": dict(converts),
            "opcodes": sorted({i[2] for i in inner}),
        }
    return thunks


def category(thunk: dict) -> str:
    """A thunk's row in the profile table."""
    if thunk["dots"]:
        kinds = sorted({d["dtypes"] for d in thunk["dots"]})
        return f"{thunk['phase']} dot, {thunk['library']}, {' + '.join(kinds)}"
    if thunk["converts"] and set(thunk["opcodes"]) <= {"convert", "parameter", "bitcast", "reshape", "copy"}:
        return f"{thunk['phase']} converts only"
    return f"{thunk['phase']} other ({thunk['library']})"


def dot_table(thunks: dict) -> list[dict]:
    """Rows (phase, library, dtypes): dot count and GFLOP."""
    rows = collections.defaultdict(lambda: {"dots": 0, "gflop": 0.0})
    for t in thunks.values():
        for d in t["dots"]:
            row = rows[(d["phase"], t["library"], d["dtypes"])]
            row["dots"] += 1
            row["gflop"] += d["gflop"]
    return [{"phase": p, "library": lib, "dtypes": dt, **v} for (p, lib, dt), v in sorted(rows.items())]


def convert_table(thunks: dict) -> dict:
    """Million elements converted outside YNNPACK fusions, by phase and direction."""
    out = collections.Counter()
    for t in thunks.values():
        for k, n in t["converts"].items():
            out[f"{t['phase']} {k}"] += n / 1e6
    return dict(out)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args) -> dict:
    """Build, compile, analyse (and optionally run / profile) one step in this process."""
    if args.profile and "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    import jax
    from train_step import build_jdr_step, random_batch

    import jdr
    from jdr.models import hf

    model_dir = hf.find_minilm()
    _, spec, _ = hf.load(model_dir)
    batch = random_batch(args, spec.bert.vocab_size)
    args.dropout = True
    step, state, sharded, rng = build_jdr_step(args, model_dir, batch)
    c0 = cpu_seconds()
    compiled = step.lower(state, sharded, rng).compile()
    out = {"jdr": str(Path(jdr.__file__).parent), "dtype": args.dtype, "compile_cpu_s": cpu_seconds() - c0}
    text = compiled.as_text()
    if args.dump_hlo:
        Path(args.dump_hlo).write_text(text)
    thunks = analyse(text)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.update(
        dots=dot_table(thunks),
        converts_melem=convert_table(thunks),
        xla_gflop=float(cost["flops"]) / 1e9,
        xla_gbytes_accessed=float(cost.get("bytes accessed", 0.0)) / 1e9,
        top_level_instructions=len(thunks),
        transposes_copies=sum(1 for t in thunks.values() if {"transpose", "copy"} & set(t["opcodes"])),
    )
    if not args.steps:
        return out
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], sharded, rng)
        jax.block_until_ready(metrics["loss"])
        return float(metrics["loss"][0])

    out["loss_first_step"] = run()  # warm-up
    c0, w0 = cpu_seconds(), time.perf_counter()
    for _ in range(args.steps):
        run()
    out["cpu_s_per_step"] = (cpu_seconds() - c0) / args.steps
    out["wall_s_per_step_noise"] = (time.perf_counter() - w0) / args.steps
    if args.profile:
        import tempfile

        from jax.profiler import ProfileData

        with tempfile.TemporaryDirectory() as d:
            jax.profiler.start_trace(d)
            run()
            jax.profiler.stop_trace()
            times = collections.Counter()
            for path in Path(d).rglob("*.xplane.pb"):
                for plane in ProfileData.from_file(str(path)).planes:
                    for line in plane.lines:
                        for ev in line.events:
                            if ev.name in thunks:
                                times[category(thunks[ev.name])] += ev.duration_ns / 1e9
        total = sum(times.values())
        out["profile_share"] = {k: v / total for k, v in times.most_common()}
        out["profile_thunk_s_noise"] = total
    return out


def markdown(results: list[dict]) -> str:
    """Dot tables per (arm, dtype) from round 0, then the CPU-seconds rows of every round."""
    lines = []
    for r in results:
        if r["round"] != 0:
            continue
        lines += [
            f"### {r['arm']}, {r['dtype']} (jdr at {r['jdr']})",
            "",
            f"XLA cost analysis: {r['xla_gflop']:.0f} GFLOP, {r['xla_gbytes_accessed']:.0f} GB accessed; "
            f"{r['top_level_instructions']} top-level instructions, {r['transposes_copies']} with a transpose/copy.",
            "",
            "| phase | library | dtypes | dots | GFLOP |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {d['phase']} | {d['library']} | {d['dtypes']} | {d['dots']} | {d['gflop']:.1f} |" for d in r["dots"]
        ]
        conv = ", ".join(f"{k} {v:.1f} M" for k, v in sorted(r["converts_melem"].items()))
        lines += ["", f"Converts outside YNNPACK fusions (elements): {conv or 'none'}.", ""]
        if "profile_share" in r:
            lines += ["| profile category (one step) | share of thunk time |", "|---|---|"]
            lines += [f"| {k} | {v:.1%} |" for k, v in r["profile_share"].items() if v >= 0.005]
            lines.append("")
    timed = [r for r in results if "cpu_s_per_step" in r]
    if timed:
        lines += [
            "| round | arm | dtype | CPU s / step (user+sys) | wall s / step (noise) | loss, step 1 |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['round']} | {r['arm']} | {r['dtype']} | {r['cpu_s_per_step']:.2f} | "
            f"{r['wall_s_per_step_noise']:.2f} | {r['loss_first_step']:.6f} |"
            for r in timed
        ]
        by = collections.defaultdict(list)
        for r in timed:
            by[(r["arm"], r["dtype"])].append(r["cpu_s_per_step"])
        lines += [""] + [
            f"- {arm} {dtype}: median CPU s / step {statistics.median(v):.2f} over {len(v)} rounds"
            for (arm, dtype), v in sorted(by.items())
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--passage-len", type=int, default=256)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=0, help="timed steps after one warm-up step (0: HLO only)")
    ap.add_argument("--profile", action="store_true", help="one more step under the per-thunk profiler")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--arm", action="append", default=[], help="NAME=DIR: a jdr tree first on PYTHONPATH")
    ap.add_argument("--out", default="bf16_train_step")
    ap.add_argument("--dump-hlo", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    from _common import RESULTS, cpu_model, jdr_env

    arms = [a.split("=", 1) for a in args.arm] or [["this", "."]]
    passthrough = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("batch", "negatives", "query_len", "passage_len", "steps")
    ]
    passthrough += ["--profile"] if args.profile else []
    results = []
    for i in range(args.rounds):
        for name, tree in arms:
            for dtype in args.dtypes.split(","):
                env = jdr_env()
                env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(tree).resolve()), env.get("PYTHONPATH"))))
                cmd = [sys.executable, __file__, "--child", f"--dtype={dtype}", *passthrough]
                proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                r = {"round": i, "arm": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
                results.append(r)
                print(
                    f"round {i} {name} {dtype}: "
                    + ", ".join(
                        f"{k} {r[k]:.2f}"
                        for k in ("compile_cpu_s", "cpu_s_per_step", "wall_s_per_step_noise")
                        if k in r
                    ),
                    flush=True,
                )
    summary = {"cpu": cpu_model(), "command": " ".join(sys.argv), "args": vars(args), "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"CPU: {summary['cpu']}\n" + markdown(results))


if __name__ == "__main__":
    main()
