"""How often a MoCo query meets one of its own relevant documents in the queue, without training.

The queue holds the positives' document ids of the last `moco.queue_size / train.global_batch_size` steps; a query
whose relevant documents (`Example.relevant`: for self-supervised pairs, its own document) sit there scores them
as negatives unless the queue mask (jdr.train.objectives.moco) drops them. This draws the run's real batches
(`jdr.train.trainer.prepare`: same source, seed and order as `jdr train`) and replays the queue's ids, the way the
step fills it, for `--steps` steps (default: two epochs of the source's pairs).

    python benchmarks/moco_queue_false_negatives.py --config configs/scifact_selfsup.py \
        --config.data.selfsup.pairs=ict --config.model.query_max_length=64 --config.moco.enabled=True \
        --config.moco.queue_size=1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import deque


def count(source, queue_size: int, steps: int) -> dict:
    queue: deque[str] = deque(maxlen=queue_size)  # the noise rows at the start carry no document
    per_step, queries_hit = [], 0
    for _ in range(steps):
        batch = source.next_batch()
        held = {}
        for doc in queue:
            held[doc] = held.get(doc, 0) + 1
        hits = [sum(held.get(d, 0) for d in ex.relevant) for ex in batch]
        per_step.append(sum(hits))
        queries_hit += sum(h > 0 for h in hits)
        queue.extend(ex.passage_keys[0] for ex in batch)
    n = steps * len(batch)
    return {
        "steps": steps,
        "queries": n,
        "queue_size": queue_size,
        "masked_pairs_per_step": sum(per_step) / steps,
        "queries_with_a_masked_row": queries_hit,
        "fraction_of_queries": queries_hit / n,
        "first_step_with_a_hit": next((i + 1 for i, c in enumerate(per_step) if c), None),
    }


def main(argv=None) -> int:
    from jdr.config import load_config, split_config_args
    from jdr.train.trainer import prepare

    argv = sys.argv[1:] if argv is None else argv
    rest, overrides = split_config_args(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=0, help="steps to replay (0 = two epochs of pairs)")
    args = parser.parse_args(rest)
    cfg = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory() as workdir:  # prepare writes nothing; it needs a path
        run = prepare(cfg, workdir)
    pairs = run.source.describe().get("examples_per_epoch")
    if not args.steps and not pairs:
        parser.error("this source does not say its pairs per epoch: pass --steps")
    steps = args.steps or 2 * -(-int(pairs) // cfg.train.global_batch_size)
    result = {"pairs_per_epoch": pairs, **count(run.source, cfg.moco.queue_size, steps)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
