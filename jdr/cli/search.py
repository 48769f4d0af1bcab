"""`jdr search`: dense search of one or several memories with a model's query embeddings, or BM25; a TREC run."""

from __future__ import annotations

from jdr.cli.common import dim_arg, load_model, model_args


def add_arguments(p):
    dim_arg(p)
    model_args(p, required=False)
    p.add_argument(
        "--index",
        default=None,
        action="append",
        metavar="[NAME=]INDEX",
        help="index written by `jdr index` (with INDEX.ids.txt); repeat to search several memories as "
        "one: doc ids become NAME:docid (NAME defaults to the file name up to its first dot)",
    )
    p.add_argument("--queries", default=None, help="BEIR queries.jsonl (with --bm25 --data: default the split's)")
    p.add_argument("--bm25", action="store_true", help="BM25 (bm25s) over --corpus or --data instead of a model")
    p.add_argument("--corpus", default=None, help="with --bm25: BEIR corpus.jsonl")
    p.add_argument(
        "--data", default=None, help="with --bm25: BEIR dataset dir or name (its corpus and the queries of --split)"
    )
    p.add_argument("--split", default="test", help="with --bm25 --data: the qrels split whose queries to search")
    p.add_argument(
        "--bm25-preset",
        choices=("lucene", "bm25s"),
        default="lucene",
        help="with --bm25: lucene = Pyserini's BEIR BM25 (k1 0.9, b 0.4, Porter stemming; default), "
        "bm25s = jdr's former one (k1 1.5, b 0.75, no stemming)",
    )
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--output", required=True, help="TREC run file")
    p.add_argument("--max-length", type=int, default=None, help="query token limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search depth")
    p.add_argument("--max-probe", type=int, default=None, help="SPANN: most posting lists to read (default 8)")
    p.add_argument(
        "--eps2",
        type=float,
        default=None,
        help="SPANN: read list j only if d(q,c_j) <= (1+eps2) d(q,c_nearest) (default: no pruning)",
    )
    p.add_argument(
        "--rescore",
        type=int,
        default=None,
        metavar="M",
        help="quantized index (`jdr index --quantize`): re-score the top k*M with the float query",
    )
    p.add_argument("--tag", default="jdr", help="run tag (last TREC column)")


def run(args) -> int:
    from jdr.data.beir import load_queries
    from jdr.evaluate import write_trec_run
    from jdr.index.memories import Memories
    from jdr.models.inference import encode_texts

    if args.bm25:
        return search_bm25(args)
    if args.model is None or args.index is None or args.queries is None:
        raise ValueError("search: give --model, --index and --queries (or --bm25 with --data / --corpus)")
    if args.data or args.corpus:
        raise ValueError("search: --data / --corpus are for --bm25; a dense search reads --index")
    memories = Memories.load(args.index)
    queries = load_queries(args.queries)
    params, spec, tok = load_model(args)
    qids = list(queries)
    q_emb = encode_texts(
        params,
        spec,
        tok,
        [queries[q] for q in qids],
        tower="query",
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    hits = memories.search(
        q_emb,
        args.top_k,
        nprobe=args.nprobe,
        efSearch=args.ef_search,
        max_probe=args.max_probe,
        eps2=args.eps2,
        rescore=args.rescore,
    )
    # one memory keeps plain doc ids (runs score against its qrels); several name their memory
    ids = (
        memories.qualified_ids(hits)
        if len(memories.memories) > 1
        else [[memories.memories[0].doc_ids[r] for r in rr if r >= 0] for rr in hits.rows]
    )
    run = {qid: dict(zip(doc, map(float, sc))) for qid, doc, sc in zip(qids, ids, hits.scores)}
    write_trec_run(args.output, run, args.tag)
    print(f"wrote run for {len(run)} queries to {args.output}")
    return 0


def search_bm25(args) -> int:
    """`jdr search --bm25`: jdr's one BM25 set-up (jdr.index.bm25) over a BEIR corpus -> TREC run."""
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
    run = bm25_run(corpus, queries, args.top_k, preset=args.bm25_preset)
    write_trec_run(args.output, run, args.tag if args.tag != "jdr" else "bm25")
    print(f"wrote BM25 run for {len(run)} queries over {len(corpus)} docs to {args.output}")
    return 0
