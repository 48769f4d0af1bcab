"""`jdr compare`: per-query paired significance tests and confidence intervals of runs against a baseline."""

from __future__ import annotations

import json

RUNS_HELP = "TREC run files or `jdr train` workdirs (their test_run.trec)"


def add_arguments(p):
    p.add_argument("runs", nargs="+", help=RUNS_HELP + "; the first is the baseline unless --baseline")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--qrels", help="qrels file: BEIR TSV (query-id corpus-id score) or TREC (qid 0 docid rel)")
    where.add_argument("--data", help="BEIR dataset dir or name: qrels of --split; run ids checked against it")
    p.add_argument("--split", default="test")
    p.add_argument("--names", default=None, help="comma-separated run names (default: file stem / workdir name)")
    p.add_argument("--baseline", default=None, help="name of the baseline run (default: the first)")
    p.add_argument(
        "--metrics",
        default="ndcg@10,mrr@10,recall@100,recall@1000",
        help="from ndcg@10, mrr@10, recall@100, recall@1000, map",
    )
    p.add_argument(
        "--test",
        choices=("permutation", "t"),
        default="permutation",
        help="test whose corrected p-values decide significance (both are reported)",
    )
    p.add_argument(
        "--correction",
        choices=("holm", "bh", "by", "none"),
        default="holm",
        help="multiple-comparison correction over runs x metrics",
    )
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--resamples", type=int, default=10_000, help="randomization test resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomization test")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--markdown", action="store_true", help="print a markdown table with significance marks")


def run(args) -> int:
    from jdr import compare

    names = args.names.split(",") if args.names else [compare.run_name(r) for r in args.runs]
    if len(names) != len(args.runs):
        raise ValueError(f"compare: {len(names)} --names for {len(args.runs)} runs")
    if len(set(names)) != len(names):
        raise ValueError(f"compare: run names {names} repeat; give --names")
    qrels, query_ids, doc_ids, identical = compare.judgments(args.qrels, args.data, args.split)
    runs = {n: compare.load_run(r, query_ids=query_ids, doc_ids=doc_ids) for n, r in zip(names, args.runs)}
    info = {n: {"source": str(compare.run_path(r))} for n, r in zip(names, args.runs)}
    c = compare.compare_runs(
        qrels,
        runs,
        ignore_identical_ids=identical,
        metrics=args.metrics.split(","),
        info=info,
        baseline=args.baseline,
        test=args.test,
        correction=args.correction,
        alpha=args.alpha,
        resamples=args.resamples,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps({"qrels": args.qrels or f"{args.data}:{args.split}", **c.to_dict()}, indent=1))
    else:
        print(compare.format_markdown(c) if args.markdown else compare.format_text(c))
    return 0
