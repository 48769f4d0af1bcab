"""`jdr evaluate`: retrieve over a BEIR split with a model and print the metrics."""

from __future__ import annotations

import json

from jdr.cli.common import dim_arg, load_model, model_args


def add_arguments(p):
    dim_arg(p)
    model_args(p)
    p.add_argument("--data", required=True, help="BEIR dataset dir or name (e.g. scifact)")
    p.add_argument("--split", default="test")
    p.add_argument("--factory", default="Flat", help="faiss factory string")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="passage token limit (default: the model's own, 256 for all-MiniLM-L6-v2)",
    )
    p.add_argument("--query-max-length", type=int, default=None, help="query token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--run-output", default=None, help="also write the TREC run here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args) -> int:
    from jdr.data.beir import load_beir, resolve_dataset
    from jdr.evaluate import compute_metrics, retrieve, write_trec_run

    data = load_beir(resolve_dataset(args.data), args.split)
    params, spec, tok = load_model(args, query_max_length=args.query_max_length, passage_max_length=args.max_length)
    run = retrieve(
        params,
        spec,
        tok,
        data.corpus,
        data.queries,
        factory=args.factory,
        k=args.top_k,
        batch_size=args.batch_size,
        progress=True,
    )
    if args.run_output:
        write_trec_run(args.run_output, run)
    metrics = compute_metrics(data.qrels, run, ignore_identical_ids=True)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"{args.data} ({args.split}, {len(data.queries)} queries, {len(data.corpus)} docs; query "
            f"{spec.query_max_length} / passage {spec.passage_max_length} tokens)"
        )
        for name, value in metrics.items():
            print(f"  {name:<12} {value:.4f}")
    return 0
