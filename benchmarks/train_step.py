"""Train-step throughput: jdr's compiled InfoNCE step vs sentence-transformers' MultipleNegativesRankingLoss.

Same model (all-MiniLM-L6-v2), same random token batch (queries x `--query-len`, 1 + `--negatives` passages x
`--passage-len`, no padding), AdamW. Three sides, each in its own child process, alternating for `--repeats`
rounds: jdr with dropout, jdr without dropout, sentence-transformers (dropout on, as it trains). Prints
examples/s of each, jdr / ST, the dropout cost (1 - time without / time with), jdr's achieved FLOP/s (XLA's cost
analysis of the compiled step / step time) against a float32 matmul peak measured in the same run, the CPU model
and each child's peak RSS; writes benchmarks/results/train_step.{json,md}.

    python benchmarks/train_step.py                              # batch 32, 1 hard negative, 64 / 256 tokens
    python benchmarks/train_step.py --steps 1 --batch 4 --repeats 1  # smoke run
    python benchmarks/train_step.py --dtypes float32,bfloat16 --skip-nodrop  # both dtypes, each vs the peer's

`--dtype bfloat16`: jdr computes in bfloat16 (params, gradients and AdamW state stay float32; LayerNorm and
softmax in float32); the peer runs its forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`
(float32 params and optimizer: the same mixed-precision recipe).

torch and sentence-transformers are benchmark-only (`pip install --no-deps -r benchmarks/requirements-bench.txt`,
or `--st-python` pointing at a venv that has them), never jdr dependencies; without them only jdr runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time

import numpy as np
from _common import RESULTS, cpu_model, matmul_peak, peak_rss_mib, run_child, side_env


def random_batch(args, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token arrays for one global batch: ids in [1000, vocab) (no special tokens), all-ones masks."""
    r = np.random.default_rng(seed)
    g = 1 + args.negatives
    qi = r.integers(1000, vocab_size, size=(args.batch, args.query_len), dtype=np.int32)
    pi = r.integers(1000, vocab_size, size=(args.batch * g, args.passage_len), dtype=np.int32)
    return {"query_ids": qi, "query_mask": np.ones_like(qi), "passage_ids": pi, "passage_mask": np.ones_like(pi)}


def time_calls(fn, steps: int) -> float:
    """Seconds per call of `fn()` (which must block until done), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def build_jdr_step(args, model_dir, batch):
    """The pmapped jdr step the jdr side times, its replicated state, the device-sharded batch and the rng:
    `(step, state, sharded, rng)`. Also used by `bf16_train_step.py` to read the same step's compiled HLO."""
    import jax

    from jdr.models import encoder as enc
    from jdr.models import hf
    from jdr.train.optim import make_optimizer
    from jdr.train.state import TrainState
    from jdr.train.step import make_train_step, pmap_train_step, replicate

    params, spec, _ = hf.load(model_dir, query_max_length=args.query_len, passage_max_length=args.passage_len)
    spec = dataclasses.replace(spec, dtype=args.dtype)

    def encode_fn(p, ids, mask, tower, deterministic, rng):
        return enc.encode(p, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    tx, lr_at = make_optimizer(lr=2e-5, total_steps=1000, warmup_steps=0)
    step_fn = make_train_step(
        encode_fn, loss_name="info_nce", loss_kwargs={"temperature": 0.05}, tx=tx, lr_at=lr_at, dropout=args.dropout
    )
    n_dev = jax.local_device_count()
    if args.batch % n_dev:
        raise ValueError(f"--batch {args.batch} is not divisible by the {n_dev} local devices")
    sharded = {k: v.reshape(n_dev, -1, *v.shape[1:]) for k, v in batch.items()}
    return pmap_train_step(step_fn), replicate(TrainState.create(params, tx)), sharded, jax.random.key(0)


def bench_jdr(args, model_dir, batch) -> dict:
    """examples/s and achieved FLOP/s of the pmapped jdr step (data-parallel over local devices)."""
    from jdr.malloc import tune_malloc

    tune_malloc()  # what the `jdr` command does first (acts only with JDR_MALLOC=heap)
    import jax

    step, state, sharded, rng = build_jdr_step(args, model_dir, batch)
    n_dev = jax.local_device_count()
    holder = {"state": state}

    flops = None
    try:  # XLA's count for one device's step; a pmapped step runs n_dev of them.
        cost = step.lower(holder["state"], sharded, rng).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) * n_dev
    except Exception as e:  # cost analysis is backend-dependent; the throughput number stands without it
        print(f"cost analysis unavailable: {e}")

    def run():
        holder["state"], metrics = step(holder["state"], sharded, rng)
        jax.block_until_ready(metrics["loss"])

    seconds = time_calls(run, args.steps)
    out = {
        "seconds_per_step": seconds,
        "examples_per_s": args.batch / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "matmul_peak_flop_per_s": matmul_peak(),
        "devices": [str(d) for d in jax.local_devices()],
    }
    if flops:
        out["flops_per_step"] = flops
        out["flop_per_s"] = flops / seconds
    return out


def build_st_step(args, model_dir, batch):
    """One sentence-transformers MultipleNegativesRankingLoss + AdamW step as a callable (PyTorch, CPU; bfloat16:
    forward and loss under autocast). Also used by `profile_ops.py` to profile the same step."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.train()
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)  # scale 20 == temperature 0.05
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    g = 1 + args.negatives
    q = {
        "input_ids": torch.from_numpy(batch["query_ids"]).long(),
        "attention_mask": torch.from_numpy(batch["query_mask"]).long(),
    }
    p = batch["passage_ids"].reshape(args.batch, g, -1)
    # MNRL takes columns (anchor, positive, negative...): column j holds every query's j-th passage.
    columns = [
        {
            "input_ids": torch.from_numpy(np.ascontiguousarray(p[:, j])).long(),
            "attention_mask": torch.ones(args.batch, p.shape[2], dtype=torch.long),
        }
        for j in range(g)
    ]

    def run():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = loss_fn([q, *columns], None)
        loss.backward()
        opt.step()

    return run


def bench_sentence_transformers(args, model_dir, batch) -> dict:
    """examples/s of a sentence-transformers MultipleNegativesRankingLoss step (PyTorch, CPU)."""
    import torch

    seconds = time_calls(build_st_step(args, model_dir, batch), args.steps)
    return {
        "seconds_per_step": seconds,
        "examples_per_s": args.batch / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
    }


def write_results(result: dict) -> None:
    """benchmarks/results/train_step.json and a readable train_step.md (one table per dtype)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_step.json").write_text(json.dumps(result, indent=2) + "\n")
    a = result["args"]
    sections = result.get("by_dtype") or {a.get("dtype", "float32"): result}
    lines = [
        "# Train step: jdr vs sentence-transformers MultipleNegativesRankingLoss",
        "",
        f"CPU: {result['cpu']}. Batch {a['batch']} queries x (1 + {a['negatives']}) passages, query "
        f"{a['query_len']} / passage {a['passage_len']} tokens, AdamW, compute dtype{'s' if len(sections) > 1 else ''} "
        f"{', '.join(sections)} (jdr `dtype`; the peer: torch.autocast for bfloat16); each side in its own "
        f"process, {a['repeats']} alternating rounds of {a['steps']} timed steps after one warm-up step.",
        f" jdr side: {result.get('env', {}).get('jdr', 'glibc, XLA defaults')}; peer: "
        f"{result.get('env', {}).get('peer', 'glibc')}.",
    ]
    for dtype, section in sections.items():
        lines += [""] + ([f"## {dtype}", ""] if len(sections) > 1 else []) + _table(section)
    (RESULTS / "train_step.md").write_text("\n".join(lines) + "\n")


def _table(section: dict) -> list[str]:
    """One dtype's rounds as a markdown table and its median ratios."""
    lines = [
        "| round | jdr s/step (dropout) | jdr s/step (no dropout) | dropout cost | ST s/step | jdr / ST | "
        "jdr GFLOP/s | f32 matmul peak GFLOP/s | peak RSS MiB jdr / ST |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(section["rounds"]):
        on, off, st = r["jdr"], r.get("jdr_nodrop"), r.get("st")
        lines.append(
            f"| {i} | {on['seconds_per_step']:.2f} | {off['seconds_per_step']:.2f} | "
            f"{1 - off['seconds_per_step'] / on['seconds_per_step']:.0%} | "
            if off
            else f"| {i} | {on['seconds_per_step']:.2f} | — | — | "
        )
        lines[-1] += (
            f"{st['seconds_per_step']:.2f} | {st['seconds_per_step'] / on['seconds_per_step']:.2f} | "
            if st
            else "— | — | "
        )
        lines[-1] += (
            f"{on.get('flop_per_s', 0) / 1e9:.0f} | {on['matmul_peak_flop_per_s'] / 1e9:.0f} | "
            f"{on['peak_rss_mib']:.0f} / {st['peak_rss_mib']:.0f} |"
            if st
            else f"{on.get('flop_per_s', 0) / 1e9:.0f} | {on['matmul_peak_flop_per_s'] / 1e9:.0f} | "
            f"{on['peak_rss_mib']:.0f} / — |"
        )
    for key, label in (("jdr_over_st", "jdr / sentence-transformers"), ("dropout_cost", "dropout cost")):
        if key in section:
            lines.append(f"\n**{label}: {section[key]:.2f}** (median of rounds).")
    return lines


def main() -> None:
    """Parse flags; as the parent, alternate the children and report; as a child, time one side."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--passage-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds (one child per side per round)")
    ap.add_argument("--st-python", default=sys.executable, help="python with torch + sentence-transformers")
    ap.add_argument("--skip-st", action="store_true", help="only time jdr")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype (all sides)")
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma list (float32,bfloat16): every dtype each round, each against the peer's same dtype",
    )
    ap.add_argument("--skip-nodrop", action="store_true", help="no jdr-without-dropout side (no dropout cost)")
    ap.add_argument("--child", choices=("jdr", "jdr_nodrop", "st"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        from jdr.models import hf

        model_dir = hf.find_minilm()
        _, spec, _ = hf.load(model_dir)
        batch = random_batch(args, spec.bert.vocab_size)
        args.dropout = args.child != "jdr_nodrop"
        out = (
            bench_sentence_transformers(args, model_dir, batch)
            if args.child == "st"
            else bench_jdr(args, model_dir, batch)
        )
        print(json.dumps(out))
        return
    dtypes = args.dtypes.split(",") if args.dtypes else [args.dtype]
    if not set(dtypes) <= {"float32", "bfloat16"}:
        ap.error(f"--dtypes: {args.dtypes!r} (known: float32, bfloat16)")
    base = [
        f"--batch={args.batch}",
        f"--negatives={args.negatives}",
        f"--query-len={args.query_len}",
        f"--passage-len={args.passage_len}",
        f"--steps={args.steps}",
    ]
    result = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "cpu": cpu_model(), "env": side_env()}
    sections = {d: {"rounds": []} for d in dtypes}
    jdr_sides = ("jdr",) if args.skip_nodrop else ("jdr", "jdr_nodrop")
    for i in range(args.repeats):
        for dtype in dtypes:
            argv = base + [f"--dtype={dtype}"]
            rnd = {side: run_child(sys.executable, __file__, side, argv) for side in jdr_sides}
            if not args.skip_st:
                try:
                    rnd["st"] = run_child(args.st_python, __file__, "st", argv)
                except subprocess.CalledProcessError as e:
                    result["st_skipped"] = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e)
                    args.skip_st = True
            sections[dtype]["rounds"].append(rnd)
            print(
                f"round {i} {dtype}: " + ", ".join(f"{k} {v['seconds_per_step']:.2f} s/step" for k, v in rnd.items()),
                flush=True,
            )
    print(f"CPU: {result['cpu']}")
    for dtype, section in sections.items():
        rounds = section["rounds"]
        if not args.skip_nodrop:
            section["dropout_cost"] = statistics.median(
                1 - r["jdr_nodrop"]["seconds_per_step"] / r["jdr"]["seconds_per_step"] for r in rounds
            )
        if all("st" in r for r in rounds):
            section["jdr_over_st"] = statistics.median(
                r["st"]["seconds_per_step"] / r["jdr"]["seconds_per_step"] for r in rounds
            )
        last = rounds[-1]["jdr"]
        print(
            f"{dtype}: jdr {last['examples_per_s']:.2f} examples/s with dropout "
            f"({last.get('flop_per_s', 0) / 1e9:.0f} GFLOP/s of a {last['matmul_peak_flop_per_s'] / 1e9:.0f} GFLOP/s "
            f"f32 matmul peak, peak RSS {last['peak_rss_mib']:.0f} MiB)"
            + (f"; dropout costs {section['dropout_cost']:.0%} of the step" if "dropout_cost" in section else "")
            + (
                f"; sentence-transformers {rounds[-1]['st']['examples_per_s']:.2f} examples/s (peak RSS "
                f"{rounds[-1]['st']['peak_rss_mib']:.0f} MiB); jdr / ST = {section['jdr_over_st']:.2f}x"
                if "jdr_over_st" in section
                else f"; sentence-transformers skipped: {result.get('st_skipped', '--skip-st')}"
            )
        )
    if len(dtypes) == 1:
        result.update(sections[dtypes[0]])  # the single-dtype layout of train_step.json, as before
    else:
        result["by_dtype"] = sections
    write_results(result)


if __name__ == "__main__":
    main()
