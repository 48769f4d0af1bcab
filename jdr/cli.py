"""`jdr` command line: thin subcommands (parse, call, print). Add a subcommand by adding one entry to COMMANDS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _load_model(args, query_max_length=None, passage_max_length=None):
    """`--model`: an HF/sentence-transformers dir, a hub name, `minilm` (the installed all-MiniLM-L6-v2), or a
    `jdr train` workdir (its latest checkpoint, or `--step N`)."""
    import dataclasses

    from jdr.models import hf
    from jdr.train.workdir import is_workdir, load_workdir

    if is_workdir(args.model):
        params, spec, tok, _ = load_workdir(args.model, step=getattr(args, "step", None))
        lengths = {k: v for k, v in (("query_max_length", query_max_length),
                                     ("passage_max_length", passage_max_length)) if v}
        return params, dataclasses.replace(spec, **lengths), tok
    model = hf.find_minilm() if str(args.model) == "minilm" else args.model
    return hf.load(model, query_max_length=query_max_length, passage_max_length=passage_max_length)


MODEL_HELP = "HF/sentence-transformers dir, hub name, 'minilm', or a `jdr train` workdir"


def _model_args(p):
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--step", type=int, default=None, help="checkpoint step when --model is a workdir (default: latest)")


def _ids_path(index_path) -> Path:
    """The doc-ids file kept beside an index written by `jdr index`: row i of the index is line i."""
    return Path(f"{index_path}.ids.txt")


# -- encode ---------------------------------------------------------------------------------------------------
def _encode_args(p):
    _model_args(p)
    p.add_argument("--input", required=True, help="BEIR corpus.jsonl or queries.jsonl")
    p.add_argument("--output", required=True, help="embedding store dir (embeddings.npy, ids.txt, meta.json)")
    p.add_argument("--tower", choices=("query", "passage"), default="passage")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)


def _encode(args) -> int:
    from jdr.data.beir import load_corpus
    from jdr.index.store import save_embeddings
    from jdr.models.inference import encode_texts

    docs = load_corpus(args.input)  # a queries.jsonl reads as a corpus with empty titles
    params, spec, tok = _load_model(args)
    emb = encode_texts(params, spec, tok, docs.passages(), tower=args.tower, max_length=args.max_length,
                       batch_size=args.batch_size)
    save_embeddings(args.output, emb, docs.ids, model=str(args.model), tower=args.tower)
    print(f"wrote {len(docs.ids)} x {emb.shape[1]} embeddings to {args.output}")
    return 0


# -- index ----------------------------------------------------------------------------------------------------
def _index_args(p):
    p.add_argument("--embeddings", required=True, help="embedding store dir written by `jdr encode`")
    p.add_argument("--factory", default="Flat", help='faiss factory string, e.g. "Flat", "IVF1024,PQ32", "HNSW32"')
    p.add_argument("--output", required=True, help="index file; doc ids go to OUTPUT.ids.txt")
    p.add_argument("--train-sample", type=int, default=None, help="rows to train on (default: all)")
    p.add_argument("--seed", type=int, default=0)


def _index(args) -> int:
    from jdr.index.faiss_index import build_index, save_index
    from jdr.index.store import load_embeddings
    from jdr.io import atomic_write

    emb, ids = load_embeddings(args.embeddings)
    index = build_index(emb, args.factory, train_sample=args.train_sample, seed=args.seed)
    save_index(index, args.output)
    with atomic_write(_ids_path(args.output)) as f:
        f.writelines(f"{i}\n" for i in ids)
    print(f"wrote {args.factory} index of {index.ntotal} vectors to {args.output}")
    return 0


# -- search ---------------------------------------------------------------------------------------------------
def _search_args(p):
    _model_args(p)
    p.add_argument("--index", required=True, help="index file written by `jdr index` (with INDEX.ids.txt)")
    p.add_argument("--queries", required=True, help="BEIR queries.jsonl")
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--output", required=True, help="TREC run file")
    p.add_argument("--max-length", type=int, default=None, help="query token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search depth")
    p.add_argument("--tag", default="jdr", help="run tag (last TREC column)")


def _search(args) -> int:
    from jdr.data.beir import load_queries
    from jdr.evaluate import search_run, write_trec_run
    from jdr.index.faiss_index import load_index
    from jdr.index.store import load_ids
    from jdr.models.inference import encode_texts

    index = load_index(args.index)
    doc_ids = load_ids(_ids_path(args.index))
    queries = load_queries(args.queries)
    params, spec, tok = _load_model(args)
    qids = list(queries)
    q_emb = encode_texts(params, spec, tok, [queries[q] for q in qids], tower="query", max_length=args.max_length,
                         batch_size=args.batch_size)
    run = search_run(q_emb, qids, index, doc_ids, args.top_k, nprobe=args.nprobe, efSearch=args.ef_search)
    write_trec_run(args.output, run, args.tag)
    print(f"wrote run for {len(run)} queries to {args.output}")
    return 0


# -- evaluate -------------------------------------------------------------------------------------------------
def _evaluate_args(p):
    _model_args(p)
    p.add_argument("--data", required=True, help="BEIR dataset dir or name (e.g. scifact)")
    p.add_argument("--split", default="test")
    p.add_argument("--factory", default="Flat", help="faiss factory string")
    p.add_argument("--max-length", type=int, default=None,
                   help="passage token limit (default: the model's own, 256 for all-MiniLM-L6-v2)")
    p.add_argument("--query-max-length", type=int, default=None, help="query token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--run-output", default=None, help="also write the TREC run here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _evaluate(args) -> int:
    from jdr.data.beir import load_beir, resolve_dataset
    from jdr.evaluate import compute_metrics, retrieve, write_trec_run

    data = load_beir(resolve_dataset(args.data), args.split)
    params, spec, tok = _load_model(args)
    run = retrieve(params, spec, tok, data.corpus, data.queries, factory=args.factory, k=args.top_k,
                   query_max_length=args.query_max_length, passage_max_length=args.max_length,
                   batch_size=args.batch_size, progress=True)
    if args.run_output:
        write_trec_run(args.run_output, run)
    metrics = compute_metrics(data.qrels, run, ignore_identical_ids=True)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.data} ({args.split}, {len(data.queries)} queries, {len(data.corpus)} docs)")
        for name, value in metrics.items():
            print(f"  {name:<12} {value:.4f}")
    return 0


# -- mine -----------------------------------------------------------------------------------------------------
def _mine_args(p):
    p.add_argument("--model", default=None, help=MODEL_HELP + " (needed for ann, hybrid and the filters)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step when --model is a workdir (default: latest)")
    p.add_argument("--data", required=True, help="BEIR dataset dir or name (e.g. scifact)")
    p.add_argument("--split", default="train", help="qrels split whose queries get negatives")
    p.add_argument("--source", choices=("bm25", "ann", "hybrid"), default="bm25")
    p.add_argument("--hybrid", default="bm25:4,ann:4", help="per-source counts with --source hybrid, drawn in order")
    p.add_argument("--depth", type=int, default=200, help="positive-free candidates ranked per source")
    p.add_argument("--sample-range", default=None,
                   help="START-END: 0-based half-open slice of the positive-free ranking, i.e. ranks START+1..END "
                        "(default 0-DEPTH)")
    p.add_argument("--num", type=int, default=None,
                   help="negatives sampled per query from the range, kept in rank order; 0 = all (default 8)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--denoise-threshold", type=float, default=None,
                      help="drop candidates whose dense score >= weakest positive's score - X")
    rule.add_argument("--max-score-ratio", type=float, default=None,
                      help="drop candidates whose dense score > R x weakest positive's score")
    p.add_argument("--output", required=True, help="Tevatron JSONL to write (atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factory", default="Flat", help="faiss factory string for ann")
    p.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _mine(args) -> int:
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
    settings = MineSettings(counts, depth=args.depth, denoise_threshold=args.denoise_threshold,
                            max_score_ratio=args.max_score_ratio, seed=args.seed, factory=args.factory,
                            sample_range=None if args.sample_range is None else parse_range(args.sample_range))
    if settings.needs_model and not args.model:
        raise ValueError("mine: --source ann/hybrid, --denoise-threshold and --max-score-ratio need --model")
    data = load_beir(resolve_dataset(args.data), args.split)
    scorer = None
    if args.model:
        scorer = _Scorer(*_load_model(args), data.corpus, args.batch_size)
    summary = mine_to_jsonl(args.output, data.corpus, data.queries, data.qrels, settings, scorer=scorer)
    if args.json:
        print(json.dumps(summary))
    else:
        per = summary["negatives_per_query"]
        print(f"wrote {summary['queries']} queries to {args.output}: negatives per query min {per['min']} "
              f"mean {per['mean']:.1f} max {per['max']}; filtered {summary['filtered']}")
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


# -- train / export -------------------------------------------------------------------------------------------
def _train_args(p):
    p.add_argument("--config", default=None, help="config file (configs/*.py); overrides: --config.train.lr=2e-5")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, export (resumes if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args) -> int:
    from jdr.config import load_config
    from jdr.distributed import initialize
    from jdr.train.trainer import train

    cfg = load_config(args.config, args.config_overrides)
    initialize()
    final = train(cfg, args.workdir, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}, indent=1))
    return 0


def _export_args(p):
    p.add_argument("--workdir", required=True, help="`jdr train` workdir")
    p.add_argument("--output", required=True, help="HF + sentence-transformers model dir to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--tower", choices=("query", "passage"), default="query", help="tower to export if untied")


def _export(args) -> int:
    from jdr.models.hf import export
    from jdr.train.workdir import ENCODER_DIR, load_workdir

    params, spec, _, step = load_workdir(args.workdir, step=args.step)
    export(params, spec, Path(args.workdir) / ENCODER_DIR, args.output, tower=args.tower)
    print(f"exported step {step} ({args.tower} tower) to {args.output}")
    return 0


COMMANDS: dict[str, Command] = {
    "train": Command("train a dense retriever from a config (resumes from the workdir)", _train_args, _train),
    "export": Command("write a training workdir's encoder as an HF + sentence-transformers dir", _export_args,
                      _export),
    "vq": Command("Distill-VQ: train / evaluate a learned IVF-PQ index", lambda p: _vq().add_arguments(p),
                  lambda args: _vq().run(args)),
    "encode": Command("encode a jsonl file into an embedding store", _encode_args, _encode),
    "index": Command("build a faiss index over an embedding store", _index_args, _index),
    "search": Command("search an index with a model's query embeddings, write a TREC run", _search_args, _search),
    "evaluate": Command("retrieve over a BEIR split and print nDCG@10 / MRR@10 / recall", _evaluate_args, _evaluate),
    "mine": Command("mine hard negatives for a BEIR split into Tevatron JSONL (`data.source=jsonl`)", _mine_args,
                    _mine),
}


def _vq():
    from jdr.vq import cli

    return cli


def build_parser() -> argparse.ArgumentParser:
    """The `jdr` argument parser: one subparser per COMMANDS entry."""
    parser = argparse.ArgumentParser(prog="jdr", description="Dense text retrievers in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv=None) -> int:
    """Entry point of the `jdr` console script. Bad user input prints `jdr: error: <one line>` and returns 2."""
    from jdr.config import ConfigError, split_config_args

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv, overrides = split_config_args(argv)
    except ConfigError as e:
        print(f"jdr: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if overrides and args.command not in ("train", "vq"):
        print("jdr: error: --config.* overrides only apply to `jdr train`", file=sys.stderr)
        return 2
    args.config_overrides = overrides
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError) as e:  # DataError and ConfigError are ValueErrors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jdr: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
