"""In-batch false negatives: how often they occur (SciFact train vs a synthetic set with many shared positives),
and what masking them does to training (`data.mask_false_negatives` on vs off, same everything else).

The synthetic set (`jdr.data.testing.write_topic_beir`): 10 topics of 20-40 documents, every query of a topic
relevant to every document of the topic — in a batch of 32 (query, positive) pairs a query meets ~3 other
passages labelled relevant to it, as on the held-out dataset issue 11 describes. A tiny random-init BERT whose
vocabulary holds the synthetic words is trained with the real trainer (`jdr.train.trainer.train`) twice per
seed, masked and unmasked, and the final model is evaluated on the synthetic test queries.

    python benchmarks/false_negatives.py --scifact ../shared/data/scifact --out benchmarks/results/false_negatives

Writes OUT.json and OUT.md. Counting uses the GroupIterator exactly as training draws batches (same seed, pairs,
uniqueness rule); a pair counts when another row's passage of the batch is labelled relevant to the query.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from jdr.run_info import cpu_model  # noqa: E402  (one definition: jdr/run_info.py)


def count_in_batch(qrels: dict, *, batch: int = 32, epochs: int = 5, seed: int = 0) -> dict:
    """Per query row, how many OTHER passages of its global batch are labelled relevant to it (in-batch pairs
    only: the batch's positives), as the GroupIterator draws batches over `epochs` epochs."""
    from jdr.data.batching import relevance_mask
    from jdr.data.groups import GroupIterator
    from jdr.data.source import Example

    qids = sorted(q for q, r in qrels.items() if any(v > 0 for v in r.values()))
    it = GroupIterator(qids, qrels, None, global_batch_size=batch, num_negatives=0, seed=seed)
    relevant = {q: frozenset(d for d, r in qrels[q].items() if r > 0) for q in qids}
    dummy = np.zeros(1, np.int32)
    per_row = []
    for _ in range(epochs * it.steps_per_epoch(0)):
        groups = next(it).groups
        exs = [Example(dummy, (dummy,), g.query_id, (g.positive_id,), relevant[g.query_id]) for g in groups]
        per_row.extend((relevance_mask(exs, 0, len(exs)).sum(1) - 1).tolist())  # minus the own positive
    per_row = np.asarray(per_row)
    positives = [len(v) for v in relevant.values()]
    return {
        "queries": len(qids),
        "pairs": len(it.pairs),
        "positives_per_query_mean": float(np.mean(positives)),
        "batch": batch,
        "epochs": epochs,
        "rows_counted": int(len(per_row)),
        "relevant_in_batch_per_query": float(per_row.mean()),
        "queries_meeting_at_least_one": float((per_row > 0).mean()),
    }


def _overrides(model: Path, data: Path, *, mask: bool, seed: int, steps: int, lr: float, export: bool) -> list:
    return [
        f"model.path={model}",
        f"data.dataset={data}",
        "model.query_max_length=16",
        "model.passage_max_length=32",
        "data.dev_queries=0",
        f"data.mask_false_negatives={mask}",
        "negatives.source=random",
        "negatives.num=1",
        f"train.steps={steps}",
        "train.global_batch_size=32",
        f"train.lr={lr}",
        "train.warmup_steps=10",
        f"seed={seed}",
        "eval.every=0",
        "eval.final_test=true",
        "eval.batch_size=128",
        "checkpoint.every=0",
        "checkpoint.async_save=false",
        f"export.at_end={export}",
        "log.every=5",
        "log.tensorboard=false",
    ]


def unmasked_floor(model: Path, data: Path, seed: int, steps: int) -> float:
    """The lowest loss the UNMASKED objective can reach on the run's own batches: a query whose k other in-batch
    passages are labelled relevant at best ties them with its positive, loss ln(1 + k); mean over rows."""
    from jdr.config import load_config
    from jdr.train.trainer import prepare

    run = prepare(
        load_config(None, _overrides(model, data, mask=True, seed=seed, steps=steps, lr=1e-3, export=False)),
        Path(tempfile.mkdtemp()),
    )
    ks = [run.batches(run.source.next_batch())["false_negatives"] for _ in range(steps)]
    return float(np.mean([np.log(m.reshape(-1, m.shape[-1]).sum(1)) for m in ks]))  # sum counts the own positive


def train_once(
    model: Path, data: Path, workdir: Path, *, mask: bool, seed: int, steps: int, lr: float, export: bool = False
) -> dict:
    from jdr.config import load_config
    from jdr.train.trainer import train

    over = _overrides(model, data, mask=mask, seed=seed, steps=steps, lr=lr, export=export)
    t0 = time.perf_counter()
    final = train(load_config(None, over), workdir, progress=False)
    seconds = time.perf_counter() - t0
    log = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    trainlog = [r for r in log if "train/loss" in r]
    tail = trainlog[-4:]  # the last 20 steps
    return {
        "mask": mask,
        "seed": seed,
        "seconds": seconds,
        "start": str(model.name),
        "steps": steps,
        "curve": [
            {
                "step": r["step"],
                "loss": r["train/loss"],
                "accuracy": r["train/accuracy"],
                "false_negatives": r["train/false_negatives"],
            }
            for r in trainlog
        ],
        "final_loss_last20": float(np.mean([r["train/loss"] for r in tail])),
        "final_accuracy_last20": float(np.mean([r["train/accuracy"] for r in tail])),
        "masked_pairs_per_step": float(np.mean([r["train/false_negatives"] for r in trainlog])),
        "test": {k[5:]: v for k, v in final.items() if k.startswith("test/") and k != "test/eval_seconds"},
    }


def initial_test(model: Path, data: Path) -> dict:
    from jdr.data.beir import load_beir
    from jdr.evaluate import evaluate_model
    from jdr.models.hf import load

    params, spec, tok = load(model, query_max_length=16, passage_max_length=32)
    return dict(evaluate_model(params, spec, tok, load_beir(data, "test"), batch_size=128, k=1000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scifact", default=None, help="BEIR SciFact dir: count its in-batch relevant pairs too")
    ap.add_argument("--steps", default="30,100", help="training budgets (comma-separated)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--continue-steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/false_negatives")
    args = ap.parse_args()

    from jdr.data.beir import load_beir
    from jdr.data.testing import write_topic_beir
    from jdr.models.testing import write_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="jdr-fn-"))
    facts = write_topic_beir(
        tmp / "topics", topics=10, docs_per_topic=(20, 40), train_queries_per_topic=8, test_queries_per_topic=3, seed=0
    )
    model = write_tiny_model(
        tmp / "model",
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        vocab_words=facts.pop("words"),
        max_seq_length=32,
    )
    result = {
        "cpu": cpu_model(),
        "conditions": "shared 2-core machine under load (other jobs running)",
        "synthetic": facts,
        "steps": [int(x) for x in args.steps.split(",")],
        "lr": args.lr,
        "counts": {},
        "runs": [],
        "continued": [],
    }
    result["counts"]["synthetic_train"] = count_in_batch(load_beir(tmp / "topics", "train").qrels)
    if args.scifact:
        result["counts"]["scifact_train"] = count_in_batch(load_beir(args.scifact, "train").qrels)
    for name, c in result["counts"].items():
        print(
            f"{name}: {c['relevant_in_batch_per_query']:.3f} relevant in-batch passages per query, "
            f"{100 * c['queries_meeting_at_least_one']:.1f} % of queries meet at least one"
        )
    result["untrained_test"] = initial_test(model, tmp / "topics")
    result["unmasked_loss_floor"] = unmasked_floor(model, tmp / "topics", 0, max(result["steps"]))
    print(f"unmasked objective's loss floor on the seed-0 batches: {result['unmasked_loss_floor']:.3f}")
    seeds = [int(s) for s in args.seeds.split(",")]
    longest = max(result["steps"])
    for steps in result["steps"]:
        for seed in seeds:
            for mask in (True, False):
                keep = mask and seed == seeds[0] and steps == longest
                r = train_once(
                    model,
                    tmp / "topics",
                    tmp / f"run_{steps}_{seed}_{mask}",
                    mask=mask,
                    seed=seed,
                    steps=steps,
                    lr=args.lr,
                    export=keep,
                )
                result["runs"].append(r)
                if keep:
                    result["released_test"] = r["test"]
                _print(r)
    # the issue's protocol: a model that already retrieves well ("released"), pointed at the data for a few steps
    released = tmp / f"run_{longest}_{seeds[0]}_True" / "export"
    for mask in (True, False):
        r = train_once(
            released,
            tmp / "topics",
            tmp / f"continue_{mask}",
            mask=mask,
            seed=seeds[0] + 100,
            steps=args.continue_steps,
            lr=args.lr,
        )
        result["continued"].append(r)
        _print(r)
    # candidates per query: 32 queries x (1 positive + 1 negative)
    result["ln_candidates"] = math.log(64)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _row(x: dict) -> str:
    return (
        f"| {x['steps']} | {x['seed']} | {'on' if x['mask'] else 'off'} | {x['final_loss_last20']:.3f} | "
        f"{x['final_accuracy_last20']:.3f} | {x['masked_pairs_per_step']:.1f} | {x['test']['ndcg@10']:.4f} | "
        f"{x['test']['recall@100']:.4f} | {x['seconds']:.0f} s |"
    )


def _print(r: dict) -> None:
    print(
        f"{r['start']} seed {r['seed']} mask {r['mask']!s:5} {r['steps']} steps: loss {r['final_loss_last20']:.3f} "
        f"acc {r['final_accuracy_last20']:.3f} test ndcg@10 {r['test']['ndcg@10']:.4f} "
        f"R@100 {r['test']['recall@100']:.4f} ({r['seconds']:.0f} s)",
        flush=True,
    )


def render(r: dict) -> str:
    lines = [
        "# In-batch false negatives",
        "",
        f"CPU: {r['cpu']} ({r['conditions']}); generated by `benchmarks/false_negatives.py`.",
        "",
        "## How often (GroupIterator batches of 32 (query, positive) pairs, 5 epochs)",
        "",
        "| training set | queries | positives / query | relevant in-batch passages / query | queries meeting >= 1 |",
        "|---|---|---|---|---|",
    ]
    for name, c in r["counts"].items():
        lines.append(
            f"| {name} | {c['queries']} | {c['positives_per_query_mean']:.2f} | "
            f"{c['relevant_in_batch_per_query']:.3f} | {100 * c['queries_meeting_at_least_one']:.1f} % |"
        )
    s = r["synthetic"]
    lines += [
        "",
        f"## Training with the mask on vs off (synthetic: {s['topics']} topics, {s['documents']} documents, "
        f"{s['train_queries']} train / {s['test_queries']} test queries, {s['positives_per_query'][0]}-"
        f"{s['positives_per_query'][1]} positives per query)",
        "",
        "Tiny random-init BERT (2 layers, hidden 64), trained for the budget in the table (steps of 32 "
        "queries), 1 random negative, "
        f"InfoNCE t = 0.05, AdamW {r['lr']}; loss and accuracy are means over the last 20 steps; "
        f"ln(64 candidates) = {r['ln_candidates']:.2f}; the unmasked objective's floor on these "
        f"batches is {r['unmasked_loss_floor']:.3f} (mean ln(1 + k) over rows, k = the row's other labelled-relevant "
        "passages: a model cannot tell which of them was drawn as the positive, so at best they tie). "
        "The two runs of a seed draw identical batches: the "
        "masked pairs of the `on` run are present, unmasked, in the `off` run. Untrained model: test NDCG@10 "
        f"{r['untrained_test']['ndcg@10']:.4f}.",
        "",
        "| steps | seed | mask | train loss | train accuracy | masked pairs / step | test NDCG@10 | test R@100 "
        "| wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(_row(x))
    lines += [
        "",
        "## A trained model pointed at the data again (issue 11's protocol)",
        "",
        f"Start: the seed-{r['runs'][0]['seed']} masked {max(r['steps'])}-step model above (test NDCG@10 "
        f"{r['released_test']['ndcg@10']:.4f}), {r['continued'][0]['steps']} more steps, same settings.",
        "",
        "| steps | seed | mask | train loss | train accuracy | masked pairs / step | test NDCG@10 | test R@100 "
        "| wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(x) for x in r["continued"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
