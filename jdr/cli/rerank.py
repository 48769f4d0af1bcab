"""`jdr rerank`: re-score the top of a TREC run with a cross-encoder and write the reranked run."""

from __future__ import annotations

import sys

from jdr.cli.common import parse_step

CE_MODEL_HELP = (
    "cross-encoder: an HF *ForSequenceClassification / sentence-transformers CrossEncoder dir (one "
    "label), a `jdr train` cross-encoder workdir, or a hub name"
)


def cross_encoder_args(p) -> None:
    p.add_argument("--model", required=True, help=CE_MODEL_HELP)
    p.add_argument("--step", type=parse_step, default=None, help="checkpoint of a workdir: a step, latest or best")
    p.add_argument("--max-length", type=int, default=None, help="pair tokens (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per batch over all local devices")


def load_cross_encoder_arg(args):
    """The `--model` cross-encoder -> (params, spec, tokenizer); says on stderr what it loaded."""
    from jdr.models.cross_encoder_hf import load_cross_encoder
    from jdr.models.hf import find_minilm

    model = find_minilm() if str(args.model) == "minilm" else args.model
    params, spec, tok = load_cross_encoder(model, max_length=args.max_length, step=args.step)
    print(
        f"{args.model}: cross-encoder, {spec.bert.num_hidden_layers} layers, pairs of {spec.max_length} tokens",
        file=sys.stderr,
    )
    return params, spec, tok


def add_arguments(p):
    cross_encoder_args(p)
    p.add_argument("--run", required=True, help="TREC run to rerank (e.g. from `jdr search` / `jdr evaluate`)")
    p.add_argument("--data", required=True, help="BEIR dataset dir or name: the corpus and queries the run names")
    p.add_argument("--depth", type=int, default=100, help="documents re-scored per query (the rest are dropped)")
    p.add_argument("--output", required=True, help="reranked TREC run to write (atomically)")
    p.add_argument("--tag", default="jdr-rerank", help="run tag column")


def run(args) -> int:
    from jdr.data.beir import load_corpus, load_queries, resolve_dataset
    from jdr.evaluate import read_trec_run, write_trec_run
    from jdr.rerank import rerank_run

    if args.depth < 1:
        raise ValueError(f"rerank: --depth must be >= 1, got {args.depth}")
    data = resolve_dataset(args.data)
    corpus, queries = load_corpus(data / "corpus.jsonl"), load_queries(data / "queries.jsonl")
    ranking = read_trec_run(args.run, query_ids=queries, doc_ids=corpus.index)  # unknown ids: one line, no compile
    params, spec, tok = load_cross_encoder_arg(args)
    reranked = rerank_run(params, spec, tok, corpus, queries, ranking, depth=args.depth, batch_size=args.batch_size)
    write_trec_run(args.output, reranked, tag=args.tag)
    print(f"reranked the top {args.depth} of {len(reranked)} queries into {args.output}")
    return 0
