"""Interleaved A/B of one command under several environments (allocator preloads, XLA_FLAGS, device counts).

Each arm is `name:VAR=value;VAR=value` (an empty arm, `name:`, is the unchanged environment). Rounds alternate
the arms (A, B, C, A, B, C, ...). Per child it records wall time, user and system CPU seconds, peak RSS and
minor page faults (os.wait4's rusage of that child alone) and, when the command's last stdout line is JSON with a
"seconds" list (what `xla_flags_ab.py --child ...` prints), the median of those timed calls (steady state, without
start-up and compile); with "seconds_per_step" (`train_step.py --child jdr`), that.

    python benchmarks/env_ab.py --rounds 3 --out malloc_mimalloc \\
        --arm 'glibc:' --arm "mimalloc:LD_PRELOAD=$MI" --arm 'heap:JDR_MALLOC=heap' \\
        -- python benchmarks/xla_flags_ab.py --child encode-float32 --timed 3

Writes benchmarks/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import RESULTS, cpu_model


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    name, _, assigns = text.partition(":")
    env = {}
    for item in filter(None, assigns.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--arm {text!r}: {item!r} is not VAR=value")
        env[key] = value
    return name, env


def run_measured(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd` once under `env`: wall time, the child's user / sys CPU and minor faults (RUSAGE_CHILDREN before
    and after: it only counts reaped children, so this one alone), its steady-state seconds and peak RSS when its
    last stdout line is JSON carrying "seconds" / "peak_rss_mib"."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    rec = {"wall_s": time.perf_counter() - start, "rc": out.returncode}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rec.update(
        user_s=after.ru_utime - before.ru_utime,
        sys_s=after.ru_stime - before.ru_stime,
        minor_faults=after.ru_minflt - before.ru_minflt,
    )
    if out.returncode:
        rec["error"] = (out.stderr.strip().splitlines() or ["?"])[-1][:300]
        return rec
    try:
        last = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return rec
    if isinstance(last, dict):
        if last.get("seconds"):
            rec["steady_s"] = statistics.median(last["seconds"])
        elif last.get("seconds_per_step"):  # benchmarks/train_step.py --child jdr: already the median step
            rec["steady_s"] = last["seconds_per_step"]
        for key in ("peak_rss_mib", "user_s_per_call", "sys_s_per_call", "minor_faults_per_call"):
            if key in last:
                rec[key] = last[key]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", required=True, help="name:VAR=value;VAR=value")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True, help="results file stem under benchmarks/results/")
    ap.add_argument("--note", default="")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command after --")
    if cmd[0] == "python":
        cmd[0] = sys.executable
    arms = [parse_arm(a) for a in args.arm]
    rounds = []
    for i in range(args.rounds):
        rnd = {}
        for name, env in arms:
            rnd[name] = run_measured(cmd, env)
            r = rnd[name]
            print(
                f"round {i} {name}: "
                + (
                    r.get("error")
                    or f"steady {r.get('steady_s', float('nan')):.3f} s, wall {r['wall_s']:.1f} s, "
                    f"user {r['user_s']:.1f} s, "
                    f"sys {r['sys_s']:.1f} s, minor faults {r['minor_faults']}"
                ),
                flush=True,
            )
        rounds.append(rnd)
    result = {
        "cpu": cpu_model(),
        "command": "python benchmarks/env_ab.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "arms": {n: e for n, e in arms},
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Environment A/B: {args.out}",
        "",
        f"CPU: {result['cpu']}. Command: `{result['command']}`." + (f" {args.note}" if args.note else ""),
        "",
        "| arm | environment | steady s (median of rounds) | per round | timed call CPU s user / sys | "
        "minor faults per call | whole child: wall s | user s | sys s | minor faults | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = None
    for name, env in arms:
        runs = [r[name] for r in rounds if "error" not in r[name]]
        if not runs:
            lines.append(f"| {name} | `{env}` | failed: {rounds[0][name].get('error')} | | | | | |")
            continue

        def med(key, runs=runs):
            values = [r[key] for r in runs if key in r]
            return statistics.median(values) if values else float("nan")

        steady = med("steady_s")
        base = steady if base is None else base
        env_text = ";".join(f"{k}={v}" for k, v in env.items()) or "(unchanged)"
        per_round = ", ".join(f"{r.get('steady_s', float('nan')):.2f}" for r in runs)
        lines.append(
            f"| {name} | `{env_text}` | {steady:.3f} ({base / steady:.2f}x the speed of {arms[0][0]}) | "
            f"{per_round} | {med('user_s_per_call'):.2f} / {med('sys_s_per_call'):.2f} | "
            f"{med('minor_faults_per_call'):.0f} | {med('wall_s'):.1f} | {med('user_s'):.1f} | {med('sys_s'):.1f} | "
            f"{med('minor_faults'):.0f} | {med('peak_rss_mib'):.0f} |"
        )
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
