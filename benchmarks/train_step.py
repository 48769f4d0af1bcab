"""Train-step throughput: jdr's compiled InfoNCE step vs sentence-transformers' MultipleNegativesRankingLoss.

Same model (all-MiniLM-L6-v2), same random token batch (queries x `--query-len`, 1 + `--negatives` passages x
`--passage-len`, no padding), AdamW, one process. Reports examples/s for each, their ratio, and jdr's achieved
FLOP/s (XLA's cost analysis of the compiled step / step time) against a measured float32 matmul peak.

    python benchmarks/train_step.py                    # batch 32, 1 hard negative, 64 / 256 tokens
    python benchmarks/train_step.py --steps 1 --batch 4  # smoke run

torch and sentence-transformers are benchmark-only (`pip install torch==2.13.0 sentence-transformers`), never
jdr dependencies; without them only the jdr half runs.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdr.models import encoder as enc
from jdr.models import hf
from jdr.train.optim import make_optimizer
from jdr.train.state import TrainState
from jdr.train.step import make_train_step, pmap_train_step, replicate


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


def matmul_peak(n: int = 2048, steps: int = 5) -> float:
    """Measured float32 FLOP/s of an n x n x n `jnp.dot` on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / time_calls(lambda: dot(a, a).block_until_ready(), steps)


def bench_jdr(args, model_dir, batch) -> dict:
    """examples/s and achieved FLOP/s of the pmapped jdr step (data-parallel over local devices)."""
    params, spec, _ = hf.load(model_dir, query_max_length=args.query_len, passage_max_length=args.passage_len)

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
    step = pmap_train_step(step_fn)
    rng = jax.random.key(0)
    holder = {"state": replicate(TrainState.create(params, tx))}

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
    out = {"jdr_seconds_per_step": seconds, "jdr_examples_per_s": args.batch / seconds}
    if flops:
        out["jdr_flops_per_step"] = flops
        out["jdr_flop_per_s"] = flops / seconds
    return out


def bench_sentence_transformers(args, model_dir, batch) -> dict:
    """examples/s of a sentence-transformers MultipleNegativesRankingLoss step (PyTorch, CPU)."""
    import torch
    from sentence_transformers import SentenceTransformer, losses

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.train()
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)  # scale 20 == temperature 0.05
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    g = 1 + args.negatives
    q = {"input_ids": torch.from_numpy(batch["query_ids"]).long(),
         "attention_mask": torch.from_numpy(batch["query_mask"]).long()}
    p = batch["passage_ids"].reshape(args.batch, g, -1)
    # MNRL takes columns (anchor, positive, negative...): column j holds every query's j-th passage.
    columns = [{"input_ids": torch.from_numpy(np.ascontiguousarray(p[:, j])).long(),
                "attention_mask": torch.ones(args.batch, p.shape[2], dtype=torch.long)} for j in range(g)]

    def run():
        opt.zero_grad()
        loss = loss_fn([q, *columns], None)
        loss.backward()
        opt.step()

    seconds = time_calls(run, args.steps)
    return {"st_seconds_per_step": seconds, "st_examples_per_s": args.batch / seconds,
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    """Parse flags, run both halves on the same batch, print one JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--passage-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--skip-st", action="store_true", help="only time jdr")
    args = ap.parse_args()

    model_dir = hf.find_minilm()
    _, spec, _ = hf.load(model_dir)
    batch = random_batch(args, spec.bert.vocab_size)
    result = {"args": vars(args), "devices": [str(d) for d in jax.local_devices()]}
    result.update(bench_jdr(args, model_dir, batch))
    result["matmul_peak_flop_per_s"] = matmul_peak()
    if "jdr_flop_per_s" in result:
        result["jdr_fraction_of_peak"] = result["jdr_flop_per_s"] / result["matmul_peak_flop_per_s"]
    if not args.skip_st:
        try:
            result.update(bench_sentence_transformers(args, model_dir, batch))
            result["jdr_over_st"] = result["jdr_examples_per_s"] / result["st_examples_per_s"]
        except ImportError as e:
            result["st_skipped"] = f"{e} (pip install torch==2.13.0 sentence-transformers)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
