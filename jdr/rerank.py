"""Reranking and teacher scores with a cross-encoder: a TREC run's top-k re-scored (`jdr rerank`), and Tevatron
JSONL groups given a `score` on every passage (`jdr score`), which the `jsonl` source reads back as teacher
scores for distillation. Both score every pair in one bucketed pass over all local devices
(`jdr.models.cross_encoder.score_texts`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from jdr.data.lines import jsonl_records
from jdr.errors import DataError
from jdr.evaluate import ranked
from jdr.io import as_path, atomic_write


def rerank_run(
    params,
    spec,
    tokenizer,
    corpus,
    queries: Mapping[str, str],
    run: Mapping[str, Mapping[str, float]],
    *,
    depth: int = 100,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Each query's top-`depth` documents of `run` (trec_eval order) re-scored by the cross-encoder ->
    `{qid: {docid: logit}}`; documents below `depth` are dropped. `corpus`: a `jdr.data.beir.Corpus`; every query
    and document of the run must be in `queries` / `corpus` (`read_trec_run` checks that when it reads the file)."""
    from jdr.models.cross_encoder import score_texts

    if depth < 1:
        raise ValueError(f"rerank: --depth must be >= 1, got {depth}")
    pairs = [(qid, did) for qid, docs in run.items() for did, _ in ranked(dict(docs))[:depth]]
    logits = score_texts(
        params,
        spec,
        tokenizer,
        [queries[q] for q, _ in pairs],
        [corpus.passage(corpus.index[d]) for _, d in pairs],
        batch_size=batch_size,
        progress=progress,
        desc="rerank",
    )
    out: dict[str, dict[str, float]] = {}
    for (qid, did), s in zip(pairs, logits.tolist()):
        out.setdefault(qid, {})[did] = s
    return out


PASSAGE_LISTS = ("positive_passages", "negative_passages")


def _passage_text(p: dict) -> str:
    """The passage text a model sees: BEIR's join of title and text (`Corpus.passage`)."""
    return (p.get("title", "") + " " + p["text"]).strip()


def iter_groups(path: Path):
    """`(line_no, record)` of a Tevatron JSONL file, each checked: a string `query` and passage lists of objects
    with a string `text` (else one DataError line naming file:line)."""
    for line_no, rec in jsonl_records(path):
        if not isinstance(rec.get("query"), str):
            raise DataError(path, "missing or non-string 'query'", line_no)
        for key in PASSAGE_LISTS:
            value = rec.get(key, [])
            if not isinstance(value, list) or not all(
                isinstance(p, dict) and isinstance(p.get("text"), str) for p in value
            ):
                raise DataError(path, f"{key!r} must be a list of passages with a string 'text'", line_no)
        yield line_no, rec


def count_groups(path) -> int:
    """Records in the file, every line checked as `iter_groups` does."""
    return sum(1 for _ in iter_groups(Path(path)))


def score_groups(
    params, spec, tokenizer, records: list[dict], *, batch_size: int = 64, progress: bool = True
) -> list[dict]:
    """`records` with `score` (the cross-encoder's logit) on every positive and negative passage; a `score` the
    passage already had (e.g. the retriever's, from `jdr mine`) moves to `retriever_score`."""
    from jdr.models.cross_encoder import score_texts

    slots = [
        (r, key, j) for r, rec in enumerate(records) for key in PASSAGE_LISTS for j in range(len(rec.get(key, [])))
    ]
    logits = score_texts(
        params,
        spec,
        tokenizer,
        [records[r]["query"] for r, _, _ in slots],
        [_passage_text(records[r][key][j]) for r, key, j in slots],
        batch_size=batch_size,
        progress=progress,
        desc="score",
    )
    out = [
        {**rec, **{key: [dict(p) for p in rec.get(key, [])] for key in PASSAGE_LISTS if key in rec}} for rec in records
    ]
    for (r, key, j), s in zip(slots, logits.tolist()):
        p = out[r][key][j]
        if "score" in p and "retriever_score" not in p:
            p["retriever_score"] = p["score"]
        p["score"] = s
    return out


def score_jsonl(
    params, spec, tokenizer, input_path, output_path, *, chunk: int = 10000, batch_size: int = 64, progress: bool = True
) -> dict:
    """`score_groups` over a whole file, `chunk` records at a time: each scored chunk is written atomically to
    `<output>.parts/NNNNNN.jsonl`, so a stopped run resumes at the first missing chunk; at the end the chunks are
    joined into `output_path` (atomically) and the parts removed. Returns `{"records", "chunks", "resumed"}`.
    The input is read and checked once first, so bad input fails before the model is compiled."""
    input_path, output_path = Path(input_path), as_path(output_path)
    if chunk < 1:
        raise ValueError(f"score: --chunk must be >= 1, got {chunk}")
    total = count_groups(input_path)  # the whole file checked before anything is scored
    parts = as_path(str(output_path) + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    n_chunks, records = -(-total // chunk), []
    meta = {"input": str(input_path), "records": total, "chunk": chunk}
    if (parts / "meta.json").exists() and json.loads((parts / "meta.json").read_text()) != meta:
        raise ValueError(
            f"score: {parts} holds chunks of another run ({(parts / 'meta.json').read_text().strip()}); "
            "remove it or rerun with the same --input and --chunk"
        )
    (parts / "meta.json").write_text(json.dumps(meta))
    done = {c for c in range(n_chunks) if (parts / f"{c:06d}.jsonl").exists()}

    def flush(c: int) -> None:
        scored = score_groups(params, spec, tokenizer, records, batch_size=batch_size, progress=progress)
        with atomic_write(parts / f"{c:06d}.jsonl", encoding="utf-8") as f:
            for rec in scored:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    for i, (_, rec) in enumerate(iter_groups(input_path)):
        c = i // chunk
        if c in done:
            continue
        records.append(rec)
        if len(records) == chunk or i == total - 1:
            flush(c)
            records = []
    with atomic_write(output_path, encoding="utf-8") as f:
        for c in range(n_chunks):
            f.write((parts / f"{c:06d}.jsonl").read_text(encoding="utf-8"))
    for c in range(n_chunks):
        (parts / f"{c:06d}.jsonl").unlink()
    (parts / "meta.json").unlink()
    parts.rmdir()
    return {"records": total, "chunks": n_chunks, "resumed": len(done)}


def teacher_scores_of(rec: dict) -> list[float | None]:
    """The `score` of each passage of a record, positives first (None where absent): for tests and summaries."""
    return [p.get("score") for key in PASSAGE_LISTS for p in rec.get(key, [])]
