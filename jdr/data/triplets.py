"""sentence-transformers-style triplets — (query, positive, negative) texts without ids — as `LabeledData`.

JSONL (`{"query" | "anchor", "positive", "negative"}` per line) or TSV (three tab-separated columns). Ids are
made from first appearance (`q0, q1, ...` for distinct query texts, `p0, p1, ...` for distinct passage texts), so
the same text is one query / one passage however often it repeats; a query's positives and negatives are the
union over its rows. Training then samples negatives per (query, positive) pair from the query's `file`
negatives, rather than pairing each positive with its own row's negative.
"""

from __future__ import annotations

import os
from pathlib import Path

from jdr.data.labeled import CorpusBuilder, FileNegatives, LabeledData
from jdr.data.lines import jsonl_records, tsv_rows
from jdr.errors import DataError

_QUERY_KEYS = ("query", "anchor")


def _rows(path: Path):
    if path.suffix.lower() in (".tsv", ".txt"):
        yield from tsv_rows(path, 3, "query, positive, negative")
        return
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(path, "triplets must be .jsonl or .tsv")
    for line_no, rec in jsonl_records(path):
        key = next((k for k in _QUERY_KEYS if k in rec), None)
        if key is None:
            raise DataError(path, "missing field 'query' (or 'anchor')", line_no)
        cols = [rec.get(key), rec.get("positive"), rec.get("negative")]
        for name, value in zip((key, "positive", "negative"), cols):
            if not isinstance(value, str) or not value.strip():
                raise DataError(path, f"field {name!r} is missing, empty or not a string", line_no)
        yield line_no, cols


def load_triplets(path: str | os.PathLike) -> LabeledData:
    """Read a triplets file into `LabeledData` (see the module docstring); a negative equal to its row's positive
    is an error naming the line."""
    path = Path(path)
    corpus = CorpusBuilder()
    qids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negatives: dict[str, list[int]] = {}
    passage_ids: dict[str, str] = {}

    def passage(text: str) -> tuple[str, int]:
        pid = passage_ids.setdefault(text, f"p{len(passage_ids)}")
        return pid, corpus.add(pid, "", text)

    for line_no, (query, positive, negative) in _rows(path):
        if positive == negative:
            raise DataError(path, "the negative is the same text as the positive", line_no)
        qid = qids.setdefault(query, f"q{len(qids)}")
        pos_id, _ = passage(positive)
        qrels.setdefault(qid, {})[pos_id] = 1
        neg_id, neg_row = passage(negative)
        rows = negatives.setdefault(qid, [])
        if neg_row not in rows:
            rows.append(neg_row)
    if not qids:
        raise DataError(path, "no triplets")
    return LabeledData(
        corpus.corpus(), {q: t for t, q in qids.items()}, qrels, FileNegatives.from_lists(negatives), name=str(path)
    )
