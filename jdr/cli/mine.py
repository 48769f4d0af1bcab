"""`jdr mine`: hard negatives for a BEIR split, written as Tevatron JSONL (`data.source=jsonl` reads it)."""

from __future__ import annotations

import json

from jdr.cli.common import MODEL_HELP, STEP_HELP, load_model, parse_step


def add_arguments(p):
    p.add_argument("--model", default=None, help=MODEL_HELP + " (needed for ann, hybrid and the filters)")
    p.add_argument("--step", type=parse_step, default=None, help=STEP_HELP)
    p.add_argument("--data", required=True, help="BEIR dataset dir or name (e.g. scifact)")
    p.add_argument("--split", default="train", help="qrels split whose queries get negatives")
    p.add_argument("--source", choices=("bm25", "ann", "hybrid"), default="bm25")
    p.add_argument("--hybrid", default="bm25:4,ann:4", help="per-source counts with --source hybrid, drawn in order")
    p.add_argument("--depth", type=int, default=200, help="positive-free candidates ranked per source")
    p.add_argument(
        "--sample-range",
        default=None,
        help="START-END: 0-based half-open slice of the positive-free ranking, i.e. ranks START+1..END "
        "(default 0-DEPTH)",
    )
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help="negatives sampled per query from the range, kept in rank order; 0 = all (default 8)",
    )
    rule = p.add_mutually_exclusive_group()
    rule.add_argument(
        "--denoise-threshold",
        type=float,
        default=None,
        help="drop candidates whose dense score >= weakest positive's score - X",
    )
    rule.add_argument(
        "--max-score-ratio",
        type=float,
        default=None,
        help="drop candidates whose dense score > R x weakest positive's score",
    )
    p.add_argument(
        "--ce-model",
        default=None,
        help="cross-encoder that drops likely false negatives (RocketQA): with --ce-threshold or --ce-margin",
    )
    ce_rule = p.add_mutually_exclusive_group()
    ce_rule.add_argument("--ce-threshold", type=float, default=None, help="drop candidates whose logit >= T")
    ce_rule.add_argument(
        "--ce-margin", type=float, default=None, help="drop candidates whose logit >= the weakest positive's logit - M"
    )
    p.add_argument(
        "--ce-depth",
        type=int,
        default=30,
        help="candidates per query (in rank order) the cross-encoder judges; deeper ones are kept",
    )
    p.add_argument("--output", required=True, help="Tevatron JSONL to write (atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factory", default="Flat", help="faiss factory string for ann")
    p.add_argument(
        "--bm25-preset",
        choices=("lucene", "bm25s"),
        default="lucene",
        help="bm25: lucene = Pyserini's BEIR BM25 (k1 0.9, b 0.4, Porter stemming; default), "
        "bm25s = jdr's former one (k1 1.5, b 0.75, no stemming)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args) -> int:
    from jdr.data.beir import load_beir, resolve_dataset
    from jdr.negatives.mine import MineSettings, mine_to_jsonl, parse_range
    from jdr.negatives.sources import parse_counts

    if args.source == "hybrid":
        try:
            counts = parse_counts(args.hybrid)
        except ValueError as e:
            raise ValueError(str(e).replace("negatives.hybrid", "mine: --hybrid")) from None
        if args.num is not None and args.num != sum(counts.values()):
            raise ValueError(f"mine: --num {args.num} differs from the --hybrid counts {args.hybrid!r}")
    else:
        counts = {args.source: 8 if args.num is None else args.num}
    settings = MineSettings(
        counts,
        depth=args.depth,
        denoise_threshold=args.denoise_threshold,
        max_score_ratio=args.max_score_ratio,
        seed=args.seed,
        factory=args.factory,
        bm25_preset=args.bm25_preset,
        sample_range=None if args.sample_range is None else parse_range(args.sample_range),
    )
    if settings.needs_model and not args.model:
        raise ValueError("mine: --source ann/hybrid, --denoise-threshold and --max-score-ratio need --model")
    if bool(args.ce_model) != (args.ce_threshold is not None or args.ce_margin is not None):
        raise ValueError("mine: --ce-model goes with one of --ce-threshold / --ce-margin")
    data = load_beir(resolve_dataset(args.data), args.split)
    scorer = ce_filter = None
    if args.model:
        scorer = _Scorer(*load_model(args), data.corpus, args.batch_size)
    if args.ce_model:
        from jdr.negatives.ce_denoise import load_filter

        ce_filter = load_filter(
            args.ce_model,
            data.corpus,
            data.queries,
            threshold=args.ce_threshold,
            margin=args.ce_margin,
            depth=args.ce_depth,
            batch_size=args.batch_size,
            progress=True,
        )
    summary = mine_to_jsonl(
        args.output, data.corpus, data.queries, data.qrels, settings, scorer=scorer, ce_filter=ce_filter
    )
    if args.json:
        print(json.dumps(summary))
    else:
        per = summary["negatives_per_query"]
        print(
            f"wrote {summary['queries']} queries to {args.output}: negatives per query min {per['min']} "
            f"mean {per['mean']:.1f} max {per['max']}; filtered {summary['filtered']}"
        )
    return 0


class _Scorer:
    """The model as `jdr.negatives.mine.DenseScorer`: query tower for queries, passage tower for corpus rows."""

    def __init__(self, params, spec, tok, corpus, batch_size):
        self.params, self.spec, self.tok, self.corpus, self.batch_size = params, spec, tok, corpus, batch_size

    def _encode(self, texts, tower):
        from jdr.models.inference import encode_texts

        return encode_texts(self.params, self.spec, self.tok, texts, tower=tower, batch_size=self.batch_size)

    def queries(self, texts):
        return self._encode(list(texts), "query")

    def passages(self, rows):
        return self._encode([self.corpus.passage(int(r)) for r in rows], "passage")
