"""LTRe search placement: faiss search inside the step (jax.pure_callback) vs on the host between steps.

all-MiniLM-L6-v2 with untied towers (only the query tower trains), a fixed exact index of `--docs` unit vectors
(SciFact's corpus size by default; search cost depends on the count, not the content), `--batch` queries of
`--query-len` random tokens, top-`--top-k` + positives, ADORE's lambdarank loss, AdamW, dropout on. The two modes
run alternately in one process (A B, B A, ... so drift in machine load hits both), each round `--steps` steps;
per mode it records wall seconds per step, seconds the host thread spent inside the step call (the loop can do
nothing else then: build the next batch, run hooks), and seconds inside the faiss search.

    python benchmarks/ltre_search.py                         # batch 32, 64 tokens, 5 183 docs, top 200
    python benchmarks/ltre_search.py --rounds 1 --steps 1 --batch 4 --docs 500   # smoke run

Writes benchmarks/results/ltre_search.{json,md} (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jdr.index.fixed import FixedIndex
from jdr.models import encoder as enc
from jdr.models import hf
from jdr.run_info import cpu_model
from jdr.train.objectives.ltre import freeze_passage_tower, pmap_ltre_step
from jdr.train.state import TrainState
from jdr.train.step import replicate

RESULTS = Path(__file__).resolve().parent / "results" / "ltre_search"
MODES = ("callback", "host")


class TimedIndex(FixedIndex):
    """A FixedIndex that adds the seconds spent building candidate lists (search + gather) to `seconds`."""

    seconds = 0.0

    def candidates(self, queries, positive_rows, k):
        start = time.perf_counter()
        try:
            return super().candidates(queries, positive_rows, k)
        finally:
            TimedIndex.seconds += time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--docs", type=int, default=5183)
    ap.add_argument("--top-k", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4, help="A/B rounds (order alternates each round)")
    ap.add_argument("--steps", type=int, default=3, help="steps per mode per round")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    params, spec, _ = hf.load(hf.find_minilm(), tied=False, query_max_length=args.query_len)

    def encode_fn(p, ids, mask, tower, deterministic, rng):
        return enc.encode(p, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    r = np.random.default_rng(0)
    docs = r.normal(size=(args.docs, spec.bert.hidden_size)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    index = TimedIndex(
        FixedIndex.from_embeddings(docs, [str(i) for i in range(args.docs)]).index,
        docs,
        [str(i) for i in range(args.docs)],
    )
    n_dev = jax.local_device_count()
    qi = r.integers(1000, spec.bert.vocab_size, size=(args.batch, args.query_len), dtype=np.int32)
    pos = np.full((args.batch, 2), -1, np.int32)
    pos[:, 0] = r.choice(args.docs, size=args.batch, replace=False)
    batch = {"query_ids": qi, "query_mask": np.ones_like(qi), "positive_rows": pos}
    batch = {k: v.reshape(n_dev, -1, *v.shape[1:]) for k, v in batch.items()}

    tx = freeze_passage_tower(optax.adamw(5e-6, weight_decay=0.01))
    rng = jax.random.key(0)
    runs = {}
    for mode in MODES:
        step = pmap_ltre_step(
            encode_fn, index=index, top_k=args.top_k, search=mode, loss_name="lambdarank", loss_kwargs={}, tx=tx
        )
        state = replicate(TrainState.create(params, tx))
        start = time.perf_counter()
        state, metrics = step(state, batch, rng)  # compile + first step
        jax.block_until_ready(metrics["loss"])
        runs[mode] = {
            "step": step,
            "state": state,
            "compile_s": time.perf_counter() - start,
            "wall": 0.0,
            "in_call": 0.0,
            "search": 0.0,
            "steps": 0,
        }

    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            run = runs[mode]
            TimedIndex.seconds = 0.0
            start = time.perf_counter()
            for _ in range(args.steps):
                call = time.perf_counter()
                run["state"], metrics = run["step"](run["state"], batch, rng)
                run["in_call"] += time.perf_counter() - call
            jax.block_until_ready(metrics["loss"])
            run["wall"] += time.perf_counter() - start
            run["search"] += TimedIndex.seconds
            run["steps"] += args.steps

    rows = {
        m: {
            "seconds_per_step": r_["wall"] / r_["steps"],
            "host_blocked_per_step": r_["in_call"] / r_["steps"],
            "search_per_step": r_["search"] / r_["steps"],
            "compile_s": r_["compile_s"],
            "steps": r_["steps"],
        }
        for m, r_ in runs.items()
    }
    result = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "args": vars(args),
        "devices": n_dev,
        "modes": rows,
        "host_over_callback_seconds_per_step": rows["host"]["seconds_per_step"] / rows["callback"]["seconds_per_step"],
    }
    lines = [
        "# LTRe search placement: in-step callback vs host between steps",
        "",
        f"CPU: {result['cpu']} ({result['cpu_count']} cores, load average at the end "
        f"{result['load_avg'][0]:.1f} — under load: only the ratio is indicative); MiniLM query tower, batch "
        f"{args.batch} x {args.query_len} tokens, {args.docs} docs, top {args.top_k}, {args.rounds} alternating "
        f"rounds x {args.steps} steps per mode.",
        "",
        "| search | s/step | host blocked in the step call (s/step) | faiss search + gather (s/step) "
        "| compile + 1st step (s) |",
        "|---|---|---|---|---|",
    ]
    for m, row in rows.items():
        lines.append(
            f"| {m} | {row['seconds_per_step']:.2f} | {row['host_blocked_per_step']:.2f} | "
            f"{row['search_per_step']:.3f} | {row['compile_s']:.0f} |"
        )
    lines += ["", f"host / callback seconds per step: **{result['host_over_callback_seconds_per_step']:.2f}x**"]
    table = "\n".join(lines) + "\n"
    from jdr.io import atomic_write

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out.with_suffix(".json")) as f:
        json.dump(result, f, indent=2)
    with atomic_write(out.with_suffix(".md")) as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
