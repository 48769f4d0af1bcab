"""Negative sources -> a `NegativesTable`: random, gold (other queries' positives), bm25, ann, the negatives that
came with the training data (`file`), a mixture of memories (`memory`, `jdr.negatives.memory`), and hybrid mixes.

`build_table` is the one entry point: a source is a name with a per-query count, a hybrid is several names
with counts ({"bm25": 1, "ann": 3}). Every ranked source goes through the same positive filter and the same
denoise step (skip the top r; drop candidates the dense teacher scores near the positive).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from jdr.negatives.denoise import denoise, dense_scores, positive_scores
from jdr.negatives.table import RANDOM, NegativesTable, clean_candidates, positives_csr

SOURCES = (RANDOM, "gold", "bm25", "ann", "file", "memory")


def parse_counts(spec: str) -> dict[str, int]:
    """`"bm25:1,ann:3"` -> `{"bm25": 1, "ann": 3}` (the `negatives.hybrid` config string)."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, num = part.partition(":")
        name = name.strip()
        if not sep or name not in SOURCES or not num.strip().isdigit() or name in counts:
            raise ValueError(
                f"negatives.hybrid: bad entry {part!r} in {spec!r}; expected 'source:count' with a "
                f"source in {list(SOURCES)}, each once"
            )
        counts[name] = int(num)
    if not counts:
        raise ValueError(f"negatives.hybrid: no 'source:count' entries in {spec!r}")
    return counts


def source_counts(source: str, num: int, hybrid: str = "") -> dict[str, int]:
    """Per-source counts from the config: `{source: num}`, or `parse_counts(hybrid)` (summing to `num`)."""
    if source == "hybrid":
        counts = parse_counts(hybrid)
        if sum(counts.values()) != num:
            raise ValueError(f"negatives.hybrid {hybrid!r} sums to {sum(counts.values())}, negatives.num is {num}")
        return counts
    if source not in SOURCES:
        raise ValueError(f"negatives.source must be one of {list(SOURCES) + ['hybrid']}, got {source!r}")
    return {source: num}


def gold_candidates(
    qids: Sequence[str], qrels: Mapping[str, Mapping[str, int]], corpus_index: Mapping[str, int], k: int, seed: int
) -> np.ndarray:
    """DPR's gold negatives: for each query, up to `k` positives of the OTHER training queries in a seeded random
    order -> rows `[Q, k]` (-1 padded). The query's own positives are excluded."""
    offsets, pos = positives_csr(qids, qrels, corpus_index)
    pool = np.unique(pos)
    rng = np.random.default_rng(seed)
    out = np.full((len(qids), k), -1, dtype=np.int64)
    for i in range(len(qids)):
        own = pos[offsets[i] : offsets[i + 1]]
        take = min(len(pool), k + len(own))  # extra draws so k remain once the own positives are dropped
        drawn = pool[rng.choice(len(pool), size=take, replace=False)]
        drawn = drawn[~np.isin(drawn, own)][:k]
        out[i, : len(drawn)] = drawn
    return out


def build_table(
    counts: Mapping[str, int],
    corpus,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    qids: Sequence[str] | None = None,
    *,
    depth: int,
    seed: int = 0,
    query_emb: np.ndarray | None = None,
    passage_emb: np.ndarray | None = None,
    factory: str = "Flat",
    nprobe: int | None = None,
    skip_top: int = 0,
    denoise_threshold: float | None = None,
    version: int = 0,
    created_step: int = 0,
    file_rows: np.ndarray | None = None,
    memory=None,
    bm25_preset: str = "lucene",
) -> NegativesTable:
    """Mine every source named in `counts` for the training queries `qids` (default `sorted(qrels)`) and build
    the table sampling `counts[name]` negatives per query from each source's top-`depth`.

    `corpus` has `ids` and `passage(i)` (jdr.data.beir.Corpus). `ann` needs `query_emb[Q, d]` (aligned with
    `qids`) and `passage_emb[N, d]` (corpus rows); so does `denoise_threshold`, which drops bm25/ann candidates
    whose dense score is `>= positive score - denoise_threshold`. `skip_top` drops each ranked (bm25/ann) list's
    first r non-positive candidates. `file` needs `file_rows[Q, K]`: the ranked corpus rows that came with the
    training data (aligned with `qids`, -1 padded), filtered and denoised like any ranked source. `memory` needs
    a `jdr.negatives.memory.MemoryNegatives` and the embeddings: its candidates (rows past the corpus included;
    the table's `memory_ids` = `memory.ids`) are denoised on the scores they were mined with. `bm25_preset`: the
    BM25 of `bm25` (`jdr.index.bm25.PRESETS`). Seconds per source
    land in `table.timings` as `<source>_s`.
    """
    qids = sorted(qrels) if qids is None else list(qids)
    corpus_index = getattr(corpus, "index", None) or {d: i for i, d in enumerate(corpus.ids)}
    offsets, pos = positives_csr(qids, qrels, corpus_index)
    max_pos = int(np.diff(offsets).max(initial=0))
    k = min(depth + skip_top + max_pos, len(corpus.ids))
    dense = query_emb is not None and passage_emb is not None
    if ("ann" in counts or "memory" in counts or denoise_threshold is not None) and not dense:
        raise ValueError("negatives: sources 'ann', 'memory' and denoise_threshold need query and passage embeddings")
    if "memory" in counts and memory is None:
        raise ValueError("negatives: source 'memory' needs negatives.memories (the augmentation memories)")
    if "file" in counts and file_rows is None:
        raise ValueError(
            "negatives: source 'file' needs negatives that came with the training data (Tevatron "
            "negative_passages, triplets, MS MARCO triples); this data has none"
        )
    if dense and (len(query_emb) != len(qids) or len(passage_emb) != len(corpus.ids)):
        raise ValueError(
            f"negatives: embeddings [{len(query_emb)}], [{len(passage_emb)}] do not match "
            f"{len(qids)} queries and {len(corpus.ids)} passages"
        )
    candidates, timings = {}, {}
    for name in counts:
        if name == RANDOM:
            continue
        t0 = time.perf_counter()
        if name == "gold":
            candidates[name] = gold_candidates(qids, qrels, corpus_index, k, seed)
        elif name == "memory":
            scores, rows = memory.mine(query_emb, passage_emb, memory.width(depth + skip_top), offsets, pos, seed=seed)
            candidates[name] = denoise_ranked(
                rows,
                offsets,
                pos,
                skip_top=skip_top,
                threshold=denoise_threshold,
                query_emb=query_emb,
                passage_emb=passage_emb,
                scores=scores,
            )
        elif name in ("bm25", "ann", "file"):
            if name == "file":
                rows = np.asarray(file_rows)
                if rows.ndim != 2 or rows.shape[0] != len(qids):
                    raise ValueError(f"negatives: file rows must be [{len(qids)}, K], got shape {rows.shape}")
            elif name == "bm25":
                from jdr.index.bm25 import bm25_candidates, check_preset  # bm25s imported only when used

                check_preset(bm25_preset, "negatives.bm25_preset")
                _, rows = bm25_candidates(
                    [corpus.passage(i) for i in range(len(corpus.ids))],
                    [queries[q] for q in qids],
                    k,
                    preset=bm25_preset,
                )
            else:
                from jdr.negatives.ann import ann_candidates

                _, rows = ann_candidates(query_emb, passage_emb, k, factory=factory, nprobe=nprobe, seed=seed)
            candidates[name] = denoise_ranked(
                rows,
                offsets,
                pos,
                skip_top=skip_top,
                threshold=denoise_threshold,
                query_emb=query_emb,
                passage_emb=passage_emb,
            )
        else:
            raise ValueError(f"unknown negatives source {name!r}; known: {list(SOURCES)}")
        timings[f"{name}_s"] = time.perf_counter() - t0
    return NegativesTable.create(
        qids,
        corpus.ids,
        qrels,
        candidates,
        counts,
        depth,
        corpus_index=corpus_index,
        version=version,
        created_step=created_step,
        timings=timings,
        memory_ids=() if memory is None else memory.ids,
    )


def denoise_ranked(
    rows: np.ndarray,
    pos_offsets: np.ndarray,
    pos_rows: np.ndarray,
    *,
    skip_top: int = 0,
    threshold: float | None = None,
    query_emb: np.ndarray | None = None,
    passage_emb: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """A raw ranking `rows[Q, K]` -> positives removed, then `denoise` (skip the top `skip_top`; with
    `threshold`, drop candidates whose dense score is `>= weakest positive's score - threshold`). The dense
    scores are `query_emb . passage_emb[row]`, or `scores[Q, K]` (aligned with `rows`) when the candidates were
    mined with their scores (memory documents have no row in `passage_emb`)."""
    if scores is None:
        rows = clean_candidates(rows, pos_offsets, pos_rows, np.shape(rows)[1])
    else:
        rows, scores = clean_candidates(rows, pos_offsets, pos_rows, np.shape(rows)[1], values=scores)
    if not skip_top and threshold is None:
        return rows
    reference = None
    if threshold is not None:
        if scores is None:
            scores = dense_scores(query_emb, passage_emb, rows)
        reference = positive_scores(query_emb, passage_emb, pos_offsets, pos_rows)
    return denoise(rows, skip_top=skip_top, scores=scores, threshold=threshold, reference=reference)
