"""Retrieval evaluation: TREC run files, pytrec_eval metrics, and dense retrieval with a model over a corpus."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytrec_eval

from jdr.data.lines import whitespace_rows
from jdr.errors import DataError
from jdr.index import faiss_index
from jdr.io import atomic_write

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

METRIC_KEYS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")
TEST_RUN = "test_run.trec"  # the final test evaluation's TREC run in a `jdr train` workdir (read by `jdr compare`)


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """A query's `(docid, score)` pairs in trec_eval's order: score descending, ties by docid descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def write_trec_run(path: str | os.PathLike, run: Run, tag: str = "jdr", *, digits: int = 6) -> None:
    """Write `run` ({qid: {docid: score}}) as TREC lines `qid Q0 docid rank score tag`, ranks from 1 in
    trec_eval's order, scores with `digits` decimals (more for scores that differ in small steps, e.g. RRF's:
    scores that round equal are re-ordered by docid when the file is read)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be one non-empty word, got {tag!r}")
    with atomic_write(path) as f:
        for qid, docs in run.items():
            for rank, (did, score) in enumerate(ranked(docs), 1):
                f.write(f"{qid} Q0 {did} {rank} {float(score):.{digits}f} {tag}\n")


def read_trec_run(path: str | os.PathLike, *, query_ids=None, doc_ids=None) -> Run:
    """Read a TREC run file (`qid Q0 docid rank score tag`) into `{qid: {docid: score}}`.

    `query_ids` / `doc_ids` (containers supporting `in`), when given, must hold every id the run names: an unknown
    one is a `DataError` naming the file and line (a run of another dataset or split fails at its first line)."""
    path = Path(path)
    run: Run = {}
    for line_no, cols in whitespace_rows(path, 6, "qid Q0 docid rank score tag"):
        qid, _, did, _, score, _ = cols
        try:
            value = float(score)
        except ValueError:
            raise DataError(path, f"score {score!r} is not a number", line_no) from None
        if query_ids is not None and qid not in query_ids:
            raise DataError(path, f"query id {qid!r} is not in the queries", line_no)
        if doc_ids is not None and did not in doc_ids:
            raise DataError(path, f"doc id {did!r} is not in the corpus", line_no)
        docs = run.setdefault(qid, {})
        if did in docs:
            raise DataError(path, f"doc {did!r} listed twice for query {qid!r}", line_no)
        docs[did] = value
    if not run:
        raise DataError(path, "no run lines")
    return run


def _cut(run: Run, k: int) -> Run:
    return {q: dict(ranked(docs)[:k]) for q, docs in run.items()}


def per_query_metrics(
    qrels: Qrels, run: Run, *, ignore_identical_ids: bool = False, metrics: tuple[str, ...] = METRIC_KEYS
) -> dict[str, dict[str, float]]:
    """Per-query values `{metric: {qid: value}}` of `run` against `qrels`, via pytrec_eval (`metrics` from
    METRIC_KEYS) — what paired significance tests need.

    Every query in `qrels` with at least one relevant (score > 0) doc gets a value; such a query missing from the
    run (or with an empty list) scores 0, as trec_eval's `-c` does. Run queries without a relevant judgment are
    ignored. trec_eval's `recip_rank` has no cutoff, so MRR@10 is `recip_rank` on the run cut to its top 10.
    `ignore_identical_ids` drops a doc whose id equals the query id (BEIR's default, for datasets such as
    ArguAna/Quora where a query is also a corpus doc)."""
    unknown = sorted(set(metrics) - set(METRIC_KEYS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRIC_KEYS)}")
    if ignore_identical_ids:
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    if not qrels:
        raise ValueError("qrels have no query with a relevant (score > 0) document")
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    out = {m: dict.fromkeys(qrels, 0.0) for m in metrics}
    trec = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "recall@1000": "recall_1000", "map": "map"}
    if set(trec) & set(metrics):
        full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100,1000", "map"}).evaluate(run)
        for q, m in full.items():
            for key in set(trec) & set(metrics):
                out[key][q] = m[trec[key]]
    if "mrr@10" in metrics:
        for q, m in pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_cut(run, 10)).items():
            out["mrr@10"][q] = m["recip_rank"]
    return out


def compute_metrics(qrels: Qrels, run: Run, *, ignore_identical_ids: bool = False) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100, Recall@1000 and MAP of `run` against `qrels`: the means over the judged
    queries of `per_query_metrics` (its rules: a judged query missing from the run scores 0)."""
    per_query = per_query_metrics(qrels, run, ignore_identical_ids=ignore_identical_ids)
    return {k: sum(v.values()) / len(v) for k, v in per_query.items()}


def search_run(
    query_emb, query_ids, index, doc_ids, k: int, *, nprobe: int | None = None, efSearch: int | None = None
) -> Run:
    """Search `query_emb[M, d]` against a faiss `index` whose row i is `doc_ids[i]` -> `{qid: {docid: score}}`
    with up to `k` docs per query."""
    if len(query_ids) != len(query_emb):
        raise ValueError(f"{len(query_emb)} query embeddings but {len(query_ids)} query ids")
    if index.ntotal != len(doc_ids):
        raise ValueError(f"index holds {index.ntotal} vectors but there are {len(doc_ids)} doc ids")
    k = min(k, index.ntotal)
    scores, rows = faiss_index.search(index, query_emb, k, nprobe=nprobe, efSearch=efSearch)
    return {
        qid: {doc_ids[r]: float(s) for s, r in zip(srow, rrow) if r >= 0}
        for qid, srow, rrow in zip(query_ids, scores, rows)
    }


def retrieve(
    params,
    spec,
    tokenizer,
    corpus,
    queries: dict[str, str],
    *,
    factory: str = "Flat",
    k: int = 1000,
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    batch_size: int = 64,
    nprobe: int | None = None,
    progress: bool = False,
) -> Run:
    """Encode `corpus` (a `jdr.data.Corpus`, passage tower) and `queries` ({qid: text}, query tower), index the
    passages with faiss `factory`, and return the top-`k` run. Max lengths of None use the spec's."""
    from jdr.distributed import encode_sharded
    from jdr.models.inference import encode_texts  # jax is imported only when a model is actually run

    # Multi-host: each process encodes its share of the corpus, all get every row (a no-op for one process).
    doc_emb = encode_sharded(
        lambda texts: encode_texts(
            params,
            spec,
            tokenizer,
            texts,
            tower="passage",
            max_length=passage_max_length,
            batch_size=batch_size,
            progress=progress,
        ),
        corpus.passages(),
    )
    qids = list(queries)
    q_emb = encode_texts(
        params,
        spec,
        tokenizer,
        [queries[q] for q in qids],
        tower="query",
        max_length=query_max_length,
        batch_size=batch_size,
        progress=progress,
    )
    index = faiss_index.build_index(np.asarray(doc_emb, np.float32), factory)
    return search_run(np.asarray(q_emb, np.float32), qids, index, corpus.ids, k, nprobe=nprobe)


def evaluate_model(
    params, spec, tokenizer, data, *, prefix: str = "", run_output: str | os.PathLike | None = None, **retrieve_kwargs
) -> Iterator[tuple[str, float]]:
    """Retrieve over `data` (a `jdr.data.BeirData` split) and yield `(prefix + metric, value)` pairs, big_vision
    evaluator style. Identical query/doc ids are ignored, as BEIR does. `run_output`: also write the TREC run
    there (atomically), for `jdr compare`."""
    run = retrieve(params, spec, tokenizer, data.corpus, data.queries, **retrieve_kwargs)
    if run_output is not None:
        write_trec_run(run_output, run)
    for name, value in compute_metrics(data.qrels, run, ignore_identical_ids=True).items():
        yield prefix + name, value


def bm25_run(corpus, queries: dict[str, str], k: int = 1000, *, preset: str = "lucene") -> Run:
    """BM25 top-`k` run of `queries` ({qid: text}) over `corpus` (a `jdr.data.Corpus`, BEIR `title + " " + text`),
    with jdr's BM25 (`jdr.index.bm25.bm25_candidates`; `preset` "lucene": Pyserini's k1 0.9, b 0.4, Porter
    stemming; "bm25s": the former k1 1.5, b 0.75, no stemming). Docs sharing no term with a query are left out."""
    from jdr.index.bm25 import bm25_candidates  # bm25s is imported only when used

    qids = list(queries)
    scores, rows = bm25_candidates(corpus.passages(), [queries[q] for q in qids], k, preset=preset)
    return {
        q: {corpus.ids[r]: float(s) for s, r in zip(srow, rrow) if r >= 0} for q, srow, rrow in zip(qids, scores, rows)
    }
