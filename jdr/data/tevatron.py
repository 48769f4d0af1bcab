"""Tevatron-style training JSONL, the de-facto format of dense-retrieval training sets, and its writer.

One object per line: `{"query_id", "query", "positive_passages": [{"docid", "title", "text"}, ...],
"negative_passages": [...]}` (negatives in rank order; `jdr mine` adds `rank`, `score` and `source` to each).
The reader streams the file: passages are de-duplicated by docid across the file (text stored once), and a query
that appears on several lines gathers the positives and negatives of all of them.

Memory bound (measured, `benchmarks/results/jsonl_memory.md`): the file is never held, so memory grows with the
unique passages and the queries, not with the file's bytes. A 1 M-line file of 3.9 GiB (1 positive + 8 negatives
a line drawn from 1.5 M unique passages of ~50 words, queries of ~10 words) loads in 1.6 GiB above the interpreter
and becomes the training source `jdr train` builds (all-MiniLM-L6-v2 tokens, `file` negatives table) at a peak of
2.6 GiB above it: about 2.8 KB per line, or 1.9 KB per unique passage. Per unique passage: its text once, its id,
a corpus-index entry and 4 bytes a token; per line: the query's id, text and tokens, a qrels dict and the
negatives as corpus rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from jdr.data.labeled import CorpusBuilder, FileNegatives, LabeledData
from jdr.data.lines import jsonl_records
from jdr.data.teacher import TeacherScores
from jdr.errors import DataError
from jdr.io import atomic_write


def _text_id(path: Path, line_no: int, value, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # numeric ids are common (MS MARCO)
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, f"missing or empty {what}", line_no)
    return value


def _passages(path: Path, line_no: int, rec: dict, key: str, required: bool) -> list[tuple[str, str, str]]:
    value = rec.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise DataError(path, f"field {key!r} must be a list of passages", line_no)
    if required and not value:
        raise DataError(path, f"empty {key!r}: every query needs a positive passage", line_no)
    out = []
    for i, p in enumerate(value):
        if not isinstance(p, dict):
            raise DataError(path, f"{key}[{i}] is not an object", line_no)
        docid = _text_id(path, line_no, p.get("docid"), f"{key}[{i}].docid")
        text, title = p.get("text"), p.get("title", "")
        if not isinstance(text, str):
            raise DataError(path, f"{key}[{i}].text is missing or not a string", line_no)
        if not isinstance(title, str):
            raise DataError(path, f"{key}[{i}].title is not a string", line_no)
        out.append((docid, title, text))
    return out


def load_tevatron(path: str | os.PathLike, *, scores: bool = False) -> LabeledData:
    """Read a Tevatron JSONL training file into `LabeledData` (positives relevance 1; negatives as `file`).
    `scores`: also keep each passage's `score` as teacher scores (`LabeledData.teacher`, for distillation).

    One line per error: bad JSON, a missing field, an empty positive list, a negative equal to a positive, a
    non-UTF-8 byte, a non-numeric score (with `scores`) — each naming the file and line.
    """
    path = Path(path)
    teacher = TeacherScores(str(path)) if scores else None
    corpus = CorpusBuilder()
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negatives: dict[str, list[int]] = {}
    for line_no, rec in jsonl_records(path):
        qid = _text_id(path, line_no, rec.get("query_id"), "'query_id'")
        query = rec.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DataError(path, "missing or empty 'query'", line_no)
        positives = _passages(path, line_no, rec, "positive_passages", required=True)
        negs = _passages(path, line_no, rec, "negative_passages", required=False)
        pos_ids = {d for d, _, _ in positives}
        clash = next((d for d, _, _ in negs if d in pos_ids), None)
        if clash is not None:
            raise DataError(path, f"negative passage {clash!r} is also a positive of query {qid!r}", line_no)
        if queries.setdefault(qid, query) != query:
            raise DataError(path, f"query {qid!r} appears earlier with a different text", line_no)
        rel = qrels.setdefault(qid, {})
        for docid, title, text in positives:
            corpus.add(docid, title, text)
            rel[docid] = 1
        rows = negatives.setdefault(qid, [])
        for docid, title, text in negs:
            rows.append(corpus.add(docid, title, text))
        if teacher is not None:
            for key in ("positive_passages", "negative_passages"):
                teacher.add(line_no, qid, key, rec.get(key) or [])
    if not queries:
        raise DataError(path, "no training queries")
    return LabeledData(
        corpus.corpus(), queries, qrels, FileNegatives.from_lists(negatives), name=str(path), teacher=teacher
    )


def write_tevatron(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    """Write Tevatron JSONL records atomically (temp file, then rename); returns the number of lines."""
    n = 0
    with atomic_write(path, encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
