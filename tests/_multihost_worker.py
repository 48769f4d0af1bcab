"""One process of the multi-host CPU test (run as a subprocess by tests/test_distributed.py, never by pytest).

Trains the tiny BERT of `--model-dir` for a few steps with `jdr.train.step.make_train_step` (InfoNCE whose
passages are all-gathered over every device of every process, dropout on) under `jax.pmap(axis_name="batch")`,
feeding only this process's `host_rows` of each global batch, then encodes a small corpus with `encode_sharded`.
Writes `<out>/process_<i>.npz`: final params (flattened, '/'-joined keys), per-step losses, the pmap axis index of
each local device, and the embeddings.

With `--refresh-protocol`, it instead polls an async `RefreshHook` whose builds take a different time on each
process (and fail on process 1 in a second round) and writes what each process did to `<out>/refresh_<i>.json`.

XLA_FLAGS (fake CPU device count) must be set by the parent before this starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

GROUP = 2  # 1 positive + 1 negative per query
GLOBAL_QUERIES = 16  # 2 queries per device on 8 devices
SEQ = 16


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    from jdr.models.testing import DEFAULT_WORDS

    return [" ".join(rng.choice(DEFAULT_WORDS, rng.integers(3, 12))) for _ in range(n)]


def global_batch(step: int) -> tuple[list[str], list[str]]:
    """The same global batch (queries, passages in groups of GROUP) for `step` in every process."""
    rng = np.random.default_rng(1000 + step)
    return _texts(rng, GLOBAL_QUERIES), _texts(rng, GLOBAL_QUERIES * GROUP)


def corpus(n: int) -> list[str]:
    return _texts(np.random.default_rng(7), n)


def refresh_protocol(out: Path) -> None:
    """Async refresh decisions on several hosts: swaps, skips and failures must be the same on every process."""
    import json
    import time

    import jax

    from jdr.data.beir import Corpus
    from jdr.negatives import build_table
    from jdr.train.refresh import RefreshError, RefreshHook

    pid = jax.process_index()
    ids = [f"d{i}" for i in range(30)]
    corpus = Corpus(ids, [""] * 30, [f"text {i}" for i in range(30)], {d: i for i, d in enumerate(ids)})
    base = build_table({"random": 2}, corpus, {}, {f"q{i}": {f"d{i}": 1} for i in range(8)}, depth=5)

    def build(params, step, fail=False):
        time.sleep(0.05 if pid == 0 else 1.0)  # process 1's copy is much slower: its own timing must not matter
        if fail and pid == 1:
            raise MemoryError("out of memory encoding the corpus")
        rows = np.stack([np.random.default_rng(step).permutation(30)[:6] for _ in base.qids])
        return base.replace_candidates("ann", rows, counts={"ann": 2})

    record = {"swapped": [], "failure": None}
    hook = RefreshHook(3, build, mode="async")
    for step in range(1, 25):
        table = hook.on_step(step, {"w": np.zeros(2)})
        if table is not None:
            record["swapped"].append([step, table.version, table.created_step])
        time.sleep(0.1)
    if hook.finish() is not None:
        record["swapped"].append(["finish", hook.history[-1].version, hook.history[-1].started_step])
    record["skipped"] = hook.skipped_steps
    failing = RefreshHook(2, lambda p, s: build(p, s, fail=True), mode="async")
    try:
        for step in range(1, 30):
            failing.on_step(step, {"w": np.zeros(2)})
            time.sleep(0.1)
        failing.finish()
    except RefreshError as e:
        record["failure"] = [step, str(e)]
    with open(out / f"refresh_{pid}.json", "w") as f:
        json.dump(record, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", help="a jdr.models.testing.write_tiny_model dir (not with --refresh-protocol)")
    ap.add_argument("--coordinator", default=None)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--corpus", type=int, default=13)
    ap.add_argument("--out", required=True)
    ap.add_argument("--refresh-protocol", action="store_true", help="test the async refresh decisions instead")
    args = ap.parse_args(argv)

    from jdr import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if args.refresh_protocol:
        refresh_protocol(Path(args.out))
        distributed.sync("worker_done")
        return 0

    import jax
    from flax import traverse_util
    from flax.jax_utils import replicate, unreplicate
    from jax import lax

    from jdr.io import atomic_path
    from jdr.models.encoder import encode
    from jdr.models.hf import load
    from jdr.models.inference import encode_texts
    from jdr.models.tokenize import tokenize
    from jdr.train.optim import make_optimizer
    from jdr.train.state import TrainState
    from jdr.train.step import make_train_step, pmap_train_step

    assert jax.process_count() == args.num_processes, jax.process_count()
    params, spec, tokenizer = load(args.model_dir)

    def encode_fn(p, ids, mask, tower, deterministic, rng):
        return encode(p, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    tx, lr_at = make_optimizer(lr=1e-2, total_steps=args.steps, warmup_steps=1)
    step_fn = make_train_step(encode_fn, loss_name="info_nce", loss_kwargs={"temperature": 0.05}, tx=tx, lr_at=lr_at)
    p_step = pmap_train_step(step_fn)
    n_local = jax.local_device_count()
    axis_index = np.asarray(jax.pmap(lambda x: lax.axis_index("batch") + 0 * x, axis_name="batch")(np.zeros(n_local)))

    state = replicate(TrainState.create(params, tx))
    rng = jax.random.key(42)  # dropout on: the step folds in the global axis index, so 2x4 must equal 1x8
    losses = []
    for s in range(args.steps):
        queries, passages = global_batch(s)
        q = tokenize(tokenizer, queries, SEQ, length=SEQ)
        p = tokenize(tokenizer, passages, SEQ, length=SEQ)
        batch = {
            "query_ids": q.input_ids,
            "query_mask": q.attention_mask,
            "passage_ids": p.input_ids,
            "passage_mask": p.attention_mask,
        }
        # Each process feeds only its rows; reshaped to [local devices, per device, L].
        local = {k: v[distributed.host_shard(len(v))] for k, v in batch.items()}
        local = {k: v.reshape(n_local, -1, *v.shape[1:]) for k, v in local.items()}
        state, metrics = p_step(state, local, rng)
        losses.append(float(np.asarray(metrics["loss"])[0]))

    final = jax.tree.map(np.asarray, unreplicate(state).params)

    # Encode with the initial params so the embedding check does not depend on training matching.
    emb = distributed.encode_sharded(
        lambda texts: encode_texts(params, spec, tokenizer, texts, tower="passage", batch_size=8, progress=False),
        corpus(args.corpus),
    )

    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(final).items()}
    out = Path(args.out) / f"process_{args.process_id}.npz"
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                **{f"param/{k}": v for k, v in flat.items()},
                losses=np.array(losses),
                axis_index=axis_index,
                embeddings=emb,
                primary=np.array(distributed.is_primary()),
            )
    distributed.sync("worker_done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
