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
    `jdr train` workdir (its latest checkpoint, `--step N` or `--step best`). Says on stderr which checkpoint
    and token budgets it uses."""
    import dataclasses

    from jdr.models import hf
    from jdr.train.workdir import is_workdir, load_workdir

    if is_workdir(args.model):
        step_arg = getattr(args, "step", None)
        params, spec, tok, step = load_workdir(args.model, step=step_arg)
        lengths = {k: v for k, v in (("query_max_length", query_max_length),
                                     ("passage_max_length", passage_max_length)) if v}
        spec = dataclasses.replace(spec, **lengths)
        print(f"{args.model}: checkpoint step {step} ({step_arg or 'latest'}), query {spec.query_max_length} / "
              f"passage {spec.passage_max_length} tokens", file=sys.stderr)
        return params, spec, tok
    model = hf.find_minilm() if str(args.model) == "minilm" else args.model
    return hf.load(model, query_max_length=query_max_length, passage_max_length=passage_max_length)


MODEL_HELP = "HF/sentence-transformers dir, hub name, 'minilm', or a `jdr train` workdir"


def _step(text: str) -> int | str:
    """`--step`: a step number, `latest` or `best`."""
    if text in ("latest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step number, 'latest' or 'best', got {text!r}") from None


STEP_HELP = ("checkpoint when --model is a workdir: a step, 'latest' (default) or 'best' (best dev score saved "
             "with a checkpoint)")


def _model_args(p, required=True):
    p.add_argument("--model", required=required, help=MODEL_HELP)
    p.add_argument("--step", type=_step, default=None, help=STEP_HELP)


def _ids_path(index_path) -> Path:
    from jdr.index.memories import ids_path

    return ids_path(index_path)


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
    g = p.add_argument_group("SPANN (instead of --factory; OUTPUT becomes a directory)")
    g.add_argument("--spann", action="store_true", help="build a SPANN index: heads in RAM, posting lists on disk")
    g.add_argument("--list-size", type=int, default=1000, help="max vectors per head's cluster (balanced k-means)")
    g.add_argument("--eps1", type=float, default=0.1,
                   help="closure: also list x under c_j if d(x,c_j) <= (1+eps1) d(x,c_nearest)")
    g.add_argument("--max-replicas", type=int, default=8, help="max posting lists per vector")
    g.add_argument("--member-heads", action="store_true",
                   help="heads = the data vector nearest each centroid (SPTAG), not the centroid itself")


def _index(args) -> int:
    from jdr.index.faiss_index import build_index, save_index
    from jdr.index.spann import build_spann
    from jdr.index.store import load_embeddings
    from jdr.io import atomic_write

    emb, ids = load_embeddings(args.embeddings)
    if args.spann:
        index = build_spann(emb, args.output, list_size=args.list_size, eps1=args.eps1,
                            max_replicas=args.max_replicas, member_heads=args.member_heads, seed=args.seed)
        kind = f"SPANN ({index.meta['heads']} heads, duplication {index.meta['stats']['duplication']:.2f})"
    else:
        index = build_index(emb, args.factory, train_sample=args.train_sample, seed=args.seed)
        save_index(index, args.output)
        kind = args.factory
    with atomic_write(_ids_path(args.output)) as f:
        f.writelines(f"{i}\n" for i in ids)
    print(f"wrote {kind} index of {index.ntotal} vectors to {args.output}")
    return 0


# -- search ---------------------------------------------------------------------------------------------------
def _search_args(p):
    _model_args(p, required=False)
    p.add_argument("--index", default=None, action="append", metavar="[NAME=]INDEX",
                   help="index written by `jdr index` (with INDEX.ids.txt); repeat to search several memories as "
                        "one: doc ids become NAME:docid (NAME defaults to the file name up to its first dot)")
    p.add_argument("--queries", default=None, help="BEIR queries.jsonl (with --bm25 --data: default the split's)")
    p.add_argument("--bm25", action="store_true", help="BM25 (bm25s) over --corpus or --data instead of a model")
    p.add_argument("--corpus", default=None, help="with --bm25: BEIR corpus.jsonl")
    p.add_argument("--data", default=None, help="with --bm25: BEIR dataset dir or name (its corpus and the "
                                                "queries of --split)")
    p.add_argument("--split", default="test", help="with --bm25 --data: the qrels split whose queries to search")
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--output", required=True, help="TREC run file")
    p.add_argument("--max-length", type=int, default=None, help="query token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search depth")
    p.add_argument("--max-probe", type=int, default=None, help="SPANN: most posting lists to read (default 8)")
    p.add_argument("--eps2", type=float, default=None,
                   help="SPANN: read list j only if d(q,c_j) <= (1+eps2) d(q,c_nearest) (default: no pruning)")
    p.add_argument("--tag", default="jdr", help="run tag (last TREC column)")


def _search(args) -> int:
    from jdr.data.beir import load_queries
    from jdr.evaluate import write_trec_run
    from jdr.index.memories import Memories
    from jdr.models.inference import encode_texts

    if args.bm25:
        return _search_bm25(args)
    if args.model is None or args.index is None or args.queries is None:
        raise ValueError("search: give --model, --index and --queries (or --bm25 with --data / --corpus)")
    if args.data or args.corpus:
        raise ValueError("search: --data / --corpus are for --bm25; a dense search reads --index")
    memories = Memories.load(args.index)
    queries = load_queries(args.queries)
    params, spec, tok = _load_model(args)
    qids = list(queries)
    q_emb = encode_texts(params, spec, tok, [queries[q] for q in qids], tower="query", max_length=args.max_length,
                         batch_size=args.batch_size)
    hits = memories.search(q_emb, args.top_k, nprobe=args.nprobe, efSearch=args.ef_search,
                           max_probe=args.max_probe, eps2=args.eps2)
    # one memory keeps plain doc ids (runs score against its qrels); several name their memory
    ids = (memories.qualified_ids(hits) if len(memories.memories) > 1 else
           [[memories.memories[0].doc_ids[r] for r in rr if r >= 0] for rr in hits.rows])
    run = {qid: dict(zip(doc, map(float, sc))) for qid, doc, sc in zip(qids, ids, hits.scores)}
    write_trec_run(args.output, run, args.tag)
    print(f"wrote run for {len(run)} queries to {args.output}")
    return 0


def _search_bm25(args) -> int:
    """`jdr search --bm25`: jdr's one BM25 set-up (jdr.negatives.bm25) over a BEIR corpus -> TREC run."""
    from jdr.data.beir import load_beir, load_corpus, load_queries, resolve_dataset
    from jdr.evaluate import bm25_run, write_trec_run

    if args.model or args.index:
        raise ValueError("search: --bm25 takes no --model / --index")
    if bool(args.data) == bool(args.corpus):
        raise ValueError("search --bm25: give exactly one of --data (a BEIR dataset) and --corpus (corpus.jsonl)")
    if args.data:
        data = load_beir(resolve_dataset(args.data), args.split)
        corpus, queries = data.corpus, data.queries
    else:
        if not args.queries:
            raise ValueError("search --bm25 --corpus: give --queries too")
        corpus = load_corpus(args.corpus)
    if args.queries:
        queries = load_queries(args.queries)
    run = bm25_run(corpus, queries, args.top_k)
    write_trec_run(args.output, run, args.tag if args.tag != "jdr" else "bm25")
    print(f"wrote BM25 run for {len(run)} queries over {len(corpus)} docs to {args.output}")
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
    params, spec, tok = _load_model(args, query_max_length=args.query_max_length, passage_max_length=args.max_length)
    run = retrieve(params, spec, tok, data.corpus, data.queries, factory=args.factory, k=args.top_k,
                   batch_size=args.batch_size, progress=True)
    if args.run_output:
        write_trec_run(args.run_output, run)
    metrics = compute_metrics(data.qrels, run, ignore_identical_ids=True)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.data} ({args.split}, {len(data.queries)} queries, {len(data.corpus)} docs; query "
              f"{spec.query_max_length} / passage {spec.passage_max_length} tokens)")
        for name, value in metrics.items():
            print(f"  {name:<12} {value:.4f}")
    return 0


# -- compare / fuse -------------------------------------------------------------------------------------------
RUNS_HELP = "TREC run files or `jdr train` workdirs (their test_run.trec)"


def _compare_args(p):
    p.add_argument("runs", nargs="+", help=RUNS_HELP + "; the first is the baseline unless --baseline")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--qrels", help="qrels file: BEIR TSV (query-id corpus-id score) or TREC (qid 0 docid rel)")
    where.add_argument("--data", help="BEIR dataset dir or name: qrels of --split; run ids checked against it")
    p.add_argument("--split", default="test")
    p.add_argument("--names", default=None, help="comma-separated run names (default: file stem / workdir name)")
    p.add_argument("--baseline", default=None, help="name of the baseline run (default: the first)")
    p.add_argument("--metrics", default="ndcg@10,mrr@10,recall@100,recall@1000", help="from ndcg@10, mrr@10, "
                   "recall@100, recall@1000, map")
    p.add_argument("--test", choices=("permutation", "t"), default="permutation",
                   help="test whose corrected p-values decide significance (both are reported)")
    p.add_argument("--correction", choices=("holm", "bh", "by", "none"), default="holm",
                   help="multiple-comparison correction over runs x metrics")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--resamples", type=int, default=10_000, help="randomization test resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomization test")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--markdown", action="store_true", help="print a markdown table with significance marks")


def _compare(args) -> int:
    from jdr import compare

    names = args.names.split(",") if args.names else [compare.run_name(r) for r in args.runs]
    if len(names) != len(args.runs):
        raise ValueError(f"compare: {len(names)} --names for {len(args.runs)} runs")
    if len(set(names)) != len(names):
        raise ValueError(f"compare: run names {names} repeat; give --names")
    qrels, query_ids, doc_ids, identical = compare.judgments(args.qrels, args.data, args.split)
    runs = {n: compare.load_run(r, query_ids=query_ids, doc_ids=doc_ids) for n, r in zip(names, args.runs)}
    info = {n: {"source": str(compare.run_path(r))} for n, r in zip(names, args.runs)}
    c = compare.compare_runs(qrels, runs, ignore_identical_ids=identical, metrics=args.metrics.split(","),
                             info=info, baseline=args.baseline, test=args.test, correction=args.correction,
                             alpha=args.alpha, resamples=args.resamples, seed=args.seed)
    if args.json:
        print(json.dumps({"qrels": args.qrels or f"{args.data}:{args.split}", **c.to_dict()}, indent=1))
    else:
        print(compare.format_markdown(c) if args.markdown else compare.format_text(c))
    return 0


def _fuse_args(p):
    p.add_argument("runs", nargs="+", help=RUNS_HELP)
    p.add_argument("--method", choices=("rrf", "linear"), default="rrf")
    p.add_argument("--k", type=float, default=60.0, help="RRF constant: score = sum w / (k + rank)")
    p.add_argument("--weights", default=None, help="comma-separated, one per run (default: all 1)")
    p.add_argument("--norm", choices=("minmax", "zscore"), default="minmax", help="linear: per-query score norm")
    p.add_argument("--depth", type=int, default=None, help="fuse each run's top DEPTH docs (default: all)")
    p.add_argument("--top-k", type=int, default=1000, help="docs kept per query")
    p.add_argument("--output", required=True, help="TREC run file")
    p.add_argument("--tag", default=None, help="run tag (default: the method)")


def _fuse(args) -> int:
    from jdr.compare import load_run
    from jdr.evaluate import write_trec_run
    from jdr.fusion import fuse

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise ValueError(f"fuse: --weights {args.weights!r} must be comma-separated numbers") from None
    run = fuse([load_run(r) for r in args.runs], args.method, k=args.k, weights=weights, norm=args.norm,
               depth=args.depth, top_k=args.top_k)
    write_trec_run(args.output, run, args.tag or args.method, digits=10)
    print(f"wrote {args.method} fusion of {len(args.runs)} runs ({len(run)} queries) to {args.output}")
    return 0


# -- mine -----------------------------------------------------------------------------------------------------
def _mine_args(p):
    p.add_argument("--model", default=None, help=MODEL_HELP + " (needed for ann, hybrid and the filters)")
    p.add_argument("--step", type=_step, default=None, help=STEP_HELP)
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
    from jdr.train.preemption import EXIT_RESTART
    from jdr.train.trainer import train

    cfg = load_config(args.config, args.config_overrides)
    initialize()
    final = train(cfg, args.workdir, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}, indent=1))
    if final.get("preempted"):
        print(f"jdr: preempted: checkpoint of step {final['step']} saved; rerun the same command to resume "
              f"(exit code {EXIT_RESTART})", file=sys.stderr)
        return EXIT_RESTART
    return 0


def _export_args(p):
    p.add_argument("--workdir", required=True, help="`jdr train` workdir")
    p.add_argument("--output", required=True,
                   help="HF + sentence-transformers model dir to write (untied towers: OUTPUT/query, OUTPUT/passage)")
    p.add_argument("--step", type=_step, default=None, help="checkpoint: a step, 'latest' (default) or 'best'")
    p.add_argument("--tower", choices=("query", "passage"), default=None,
                   help="export only this tower of an untied encoder (default: both)")


def _export(args) -> int:
    from jdr.models.hf import export, export_encoder
    from jdr.train.workdir import load_workdir

    params, spec, tokenizer, step = load_workdir(args.workdir, step=args.step)
    source = args.workdir  # its encoder/ holds the tokenizer files
    if args.tower and not spec.tied:
        written = [export(params, spec, source, args.output, tower=args.tower)]
    else:
        written = export_encoder(params, spec, source, args.output)
    print(f"exported step {step} to {', '.join(map(str, written))} (query {spec.query_max_length} / passage "
          f"{spec.passage_max_length} tokens)")
    return 0


COMMANDS: dict[str, Command] = {
    "train": Command("train a dense retriever from a config (resumes from the workdir)", _train_args, _train),
    "export": Command("write a training workdir's encoder as an HF + sentence-transformers dir", _export_args,
                      _export),
    "vq": Command("Distill-VQ: train / evaluate a learned IVF-PQ index", lambda p: _vq().add_arguments(p),
                  lambda args: _vq().run(args)),
    "encode": Command("encode a jsonl file into an embedding store", _encode_args, _encode),
    "index": Command("build a faiss index over an embedding store", _index_args, _index),
    "search": Command("search an index with a model's query embeddings (or BM25), write a TREC run",
                      _search_args, _search),
    "evaluate": Command("retrieve over a BEIR split and print nDCG@10 / MRR@10 / recall", _evaluate_args, _evaluate),
    "compare": Command("per-query significance tests and CIs of runs against a baseline run", _compare_args,
                       _compare),
    "fuse": Command("fuse runs: reciprocal rank fusion or normalised linear fusion", _fuse_args, _fuse),
    "whiten": Command("fit whitening on a corpus's embeddings and export the model with it (ST Dense + Normalize)",
                      lambda p: _whiten().add_arguments(p), lambda args: _whiten().run(args)),


    "mine": Command("mine hard negatives for a BEIR split into Tevatron JSONL (`data.source=jsonl`)", _mine_args,
                    _mine),
}


def _vq():
    from jdr.vq import cli

    return cli


def _whiten():
    from jdr import whiten

    return whiten


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
        print(f"jdr: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if not isinstance(e, _run_failures()):
            raise
        print(f"jdr: error: {_first_line(e)}", file=sys.stderr)  # the run failed; its checkpoints are intact
        return 1


def _run_failures() -> tuple[type, ...]:
    """Errors that end a run with one line: a failed refresh, checkpoint, or a non-finite loss (imported only
    when something failed: they pull in jax)."""
    from jdr.negatives.refresh import RefreshError
    from jdr.train.checkpoint import CheckpointError

    return RefreshError, CheckpointError, FloatingPointError


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
