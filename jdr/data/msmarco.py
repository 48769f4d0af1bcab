"""MS MARCO TSV readers: collection, queries, TREC qrels, and training triples (texts or ids)."""

from __future__ import annotations

import os
from pathlib import Path

from jdr.data.beir import Corpus, add_judgment
from jdr.data.lines import tsv_rows, whitespace_rows
from jdr.errors import DataError


def _id_text_table(path: Path, kind: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line_no, (rid, text) in tsv_rows(path, 2, f"{kind} id, text"):
        if rid in out:
            raise DataError(path, f"duplicate id {rid!r}", line_no)
        out[rid] = text
    if not out:
        raise DataError(path, f"no {kind}s")
    return out


def load_collection(path: str | os.PathLike) -> Corpus:
    """Read collection.tsv (`pid\\ttext`) into a `Corpus` with empty titles, in file order."""
    table = _id_text_table(Path(path), "passage")
    ids = list(table)
    return Corpus(ids=ids, titles=[""] * len(ids), texts=list(table.values()), index={d: i for i, d in enumerate(ids)})


def load_queries_tsv(path: str | os.PathLike) -> dict[str, str]:
    """Read queries.tsv (`qid\\ttext`) into `{qid: text}` in file order."""
    return _id_text_table(Path(path), "query")


def load_qrels_trec(path: str | os.PathLike, corpus_ids=None, query_ids=None) -> dict[str, dict[str, int]]:
    """Read TREC qrels (`qid iter pid rel`, whitespace-separated) into `{qid: {pid: rel}}`.

    `corpus_ids` / `query_ids`, when given, must contain every id named.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for line_no, cols in whitespace_rows(path, 4, "qid, iter, pid, rel"):
        qid, _, pid, rel = cols
        add_judgment(
            qrels,
            path,
            line_no,
            qid,
            pid,
            rel,
            corpus_ids,
            query_ids,
            score_name="relevance",
            doc_name="passage",
            corpus_name="collection",
        )
    if not qrels:
        raise DataError(path, "no judgments")
    return qrels


def load_triples(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Read text triples (`query\\tpositive\\tnegative`) as a list of 3-tuples of strings."""
    path = Path(path)
    rows = [tuple(cols) for _, cols in tsv_rows(path, 3, "query, positive, negative")]
    if not rows:
        raise DataError(path, "no triples")
    return rows


def load_id_triples(path: str | os.PathLike, corpus_ids=None, query_ids=None) -> list[tuple[str, str, str]]:
    """Read id triples (`qid\\tpos_pid\\tneg_pid`) as `(qid, pos, neg)` string tuples, checking ids when given."""
    path = Path(path)
    rows = []
    for line_no, (qid, pos, neg) in tsv_rows(path, 3, "qid, positive pid, negative pid"):
        if query_ids is not None and qid not in query_ids:
            raise DataError(path, f"query id {qid!r} is not in the queries file", line_no)
        for pid in (pos, neg):
            if corpus_ids is not None and pid not in corpus_ids:
                raise DataError(path, f"passage id {pid!r} is not in the collection", line_no)
        rows.append((qid, pos, neg))
    if not rows:
        raise DataError(path, "no triples")
    return rows


def load_msmarco_training(
    collection: str | os.PathLike,
    queries: str | os.PathLike,
    qrels: str | os.PathLike,
    triples: str | os.PathLike | None = None,
):
    """MS MARCO training files as `LabeledData`: the collection, the judged training queries, their qrels, and —
    from id triples (`qid, positive pid, negative pid`), when given — each query's negatives in file order as the
    `file` negatives source (the official triples' BM25 negatives)."""
    from jdr.data.labeled import FileNegatives, LabeledData

    corpus = load_collection(collection)
    all_queries = load_queries_tsv(queries)
    rels = load_qrels_trec(qrels, corpus.index, all_queries)
    negatives = None
    if triples:
        lists: dict[str, dict[int, None]] = {}
        for qid, _, neg in load_id_triples(triples, corpus.index, all_queries):
            lists.setdefault(qid, {})[corpus.index[neg]] = None  # ordered set: first occurrence wins
        negatives = FileNegatives.from_lists({q: list(rows) for q, rows in lists.items()})
    return LabeledData(corpus, {q: all_queries[q] for q in rels}, rels, negatives, name=str(Path(collection).parent))
