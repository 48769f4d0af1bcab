"""Offline hard-negative mining (`jdr mine`): rank the corpus for each training query with BM25, the dense model
(ANN) or both, keep the candidates ranked in a window, drop likely false negatives, sample N, and write Tevatron
JSONL that `jdr train --config.data.source=jsonl` reads back (`negatives.source=file` trains on them).

What users of sentence-transformers' `mine_hard_negatives` and FlagEmbedding's `hn_mine` should know:

- Ranking: the same retrievers, positive filter and ranked depth as the training table (`jdr.negatives.sources`):
  each source retrieves `depth + max positives per query`, the query's positives are removed, the first `depth`
  remain. Ranks are counted on that positive-free list.
- `sample_range=(a, b)`: a 0-based, half-open slice `[a, b)` of it, i.e. the candidates ranked a+1..b (1-based);
  `(0, depth)` is everything the table would sample from, `(10, 100)` skips the ten best. (FlagEmbedding's
  `--range_for_sampling 2-200` slices the raw ranking with positives still in it; ST's `range_min` / `range_max`
  count like ours.)
- False-negative filter, on the dense model's scores against the query's weakest positive: `denoise_threshold` X
  drops `score >= positive - X` (ST's `absolute_margin`, the table's `negatives.denoise_threshold`);
  `max_score_ratio` R drops `score > R * positive` (ST's `relative_margin` m is R = 1 - m).
- Sampling: `counts[source]` = N draws without replacement from what survives, seeded by (seed, query position),
  written in rank order (ST's `sampling_strategy="random"`, FlagEmbedding's `random.sample`); N = 0 keeps every
  survivor. A document drawn by an earlier source (hybrid, in the order given) is not drawn again. A query left
  short is written with what it has; the training table tops it up with random documents, as it does for
  any short list.
- Each negative carries `rank` (1-based, positive-free), `score` (the source's own) and `source`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from jdr.negatives.denoise import above_ratio, dense_scores, near_positive, positive_scores
from jdr.negatives.table import clean_candidates, positives_csr

MINE_SOURCES = ("bm25", "ann")


class DenseScorer(Protocol):
    """The dense model as mining needs it: embeddings of query texts and of corpus rows (inner product = score)."""

    def queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def passages(self, rows: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class MineSettings:
    """`counts`: negatives per query from each source, in drawing order (`{"bm25": 8}`; 0 = all in range).
    `depth`: positive-free candidates ranked per source; `sample_range`: `[a, b)` of them (None = `[0, depth)`).
    `denoise_threshold` / `max_score_ratio`: the false-negative rules (module docstring). `factory`: faiss index
    for `ann`. `bm25_preset`: `jdr.index.bm25.PRESETS` ("lucene" default, "bm25s" the former)."""

    counts: Mapping[str, int]
    depth: int = 200
    sample_range: tuple[int, int] | None = None
    denoise_threshold: float | None = None
    max_score_ratio: float | None = None
    seed: int = 0
    factory: str = "Flat"
    bm25_preset: str = "lucene"

    def __post_init__(self):
        if not self.counts or any(s not in MINE_SOURCES for s in self.counts):
            raise ValueError(f"mine: sources must be among {list(MINE_SOURCES)}, got {list(self.counts)}")
        if any(c < 0 for c in self.counts.values()):
            raise ValueError(f"mine: negative counts must be >= 0, got {dict(self.counts)}")
        if self.depth < 1:
            raise ValueError(f"mine: --depth must be >= 1, got {self.depth}")
        a, b = self.window
        if not 0 <= a < b <= self.depth:
            raise ValueError(f"mine: --sample-range {a}-{b} must satisfy 0 <= start < end <= --depth {self.depth}")
        if self.max_score_ratio is not None and not self.max_score_ratio > 0:
            raise ValueError(f"mine: --max-score-ratio must be > 0, got {self.max_score_ratio}")

    @property
    def window(self) -> tuple[int, int]:
        return tuple(self.sample_range) if self.sample_range is not None else (0, self.depth)

    @property
    def needs_model(self) -> bool:
        return "ann" in self.counts or self.denoise_threshold is not None or self.max_score_ratio is not None


def parse_range(text: str) -> tuple[int, int]:
    """`"10-100"` -> `(10, 100)` (`--sample-range`); anything else is a one-line ValueError."""
    a, sep, b = str(text).partition("-")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit():
        raise ValueError(f"mine: --sample-range must look like START-END (e.g. 10-100), got {text!r}")
    return int(a), int(b)


@dataclasses.dataclass
class Mined:
    """Mining output: for each of `qids`, its negatives as `(corpus row, rank, score, source)` in drawing order;
    `stats` is the JSON summary (`summary()`)."""

    qids: list[str]
    negatives: list[list[tuple[int, int, float, str]]]
    stats: dict

    def summary(self) -> dict:
        n = np.asarray([len(x) for x in self.negatives], dtype=np.int64)
        per = (
            {"min": int(n.min()), "mean": float(n.mean()), "max": int(n.max())}
            if len(n)
            else {"min": 0, "mean": 0.0, "max": 0}
        )
        return {"queries": len(self.qids), "negatives": int(n.sum()), "negatives_per_query": per, **self.stats}


def _rank(source: str, corpus, query_texts: Sequence[str], k: int, q_emb, p_emb, settings: MineSettings):
    """Raw ranking `(scores[Q, k], rows[Q, k])` of one source (positives still in)."""
    if source == "bm25":
        from jdr.index.bm25 import bm25_candidates

        return bm25_candidates(
            [corpus.passage(i) for i in range(len(corpus.ids))], query_texts, k, preset=settings.bm25_preset
        )
    from jdr.negatives.ann import ann_candidates

    return ann_candidates(q_emb, p_emb, k, factory=settings.factory, seed=settings.seed)


def mine_negatives(
    corpus,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    settings: MineSettings,
    *,
    scorer: DenseScorer | None = None,
    progress: bool = True,
    ce_filter=None,
) -> Mined:
    """Mine negatives for every query of `qrels` with a positive (sorted ids; the others are counted as
    `skipped_queries`). `corpus` is a `jdr.data.beir.Corpus`; `scorer` is needed for `ann` and the filters.
    `ce_filter`: a `jdr.negatives.ce_denoise.CrossEncoderFilter` that drops what a cross-encoder judges relevant
    among the first candidates of each window (RocketQA), counted as `filtered.cross_encoder`."""
    qids = sorted(q for q, rels in qrels.items() if any(r > 0 for r in rels.values()))
    if not qids:
        raise ValueError("mine: no query has a positive judgment")
    if settings.needs_model and scorer is None:
        raise ValueError("mine: --source ann/hybrid and the false-negative filters need --model")
    offsets, pos = positives_csr(qids, qrels, corpus.index)
    k = settings.depth + int(np.diff(offsets).max())  # what the training table asks for: depth survives the filter
    texts = [queries[q] for q in qids]
    q_emb = p_emb = None
    emb_row = None  # corpus row -> row of p_emb when only some passages are embedded
    if settings.needs_model:
        q_emb = np.asarray(scorer.queries(texts), dtype=np.float32)
    if "ann" in settings.counts:
        p_emb = np.asarray(scorer.passages(np.arange(len(corpus.ids))), dtype=np.float32)
    a, b = settings.window
    stats = {
        "skipped_queries": len(qrels) - len(qids),
        "positives_removed": 0,
        "filtered": {"denoise_threshold": 0, "max_score_ratio": 0},
        "repeated_across_sources": 0,
        "short_queries": 0,
    }
    windows = {}
    for source in settings.counts:
        raw_scores, raw_rows = _rank(source, corpus, texts, k, q_emb, p_emb, settings)
        rows, scores = clean_candidates(raw_rows, offsets, pos, np.shape(raw_rows)[1], values=raw_scores)
        stats["positives_removed"] += int((np.asarray(raw_rows) >= 0).sum() - (rows >= 0).sum())
        windows[source] = [rows[:, a:b].astype(np.int64), scores[:, a:b], np.ones((len(qids), b - a), bool)]
    if settings.denoise_threshold is not None or settings.max_score_ratio is not None:
        if p_emb is None:  # BM25 alone: embed only the passages the rules look at
            needed = np.unique(np.concatenate([pos.astype(np.int64)] + [w[0][w[0] >= 0] for w in windows.values()]))
            p_emb, emb_row = np.asarray(scorer.passages(needed), dtype=np.float32), needed
        remap = (lambda r: r) if emb_row is None else (lambda r: np.where(r >= 0, np.searchsorted(emb_row, r), -1))
        reference = positive_scores(q_emb, p_emb, offsets, remap(pos.astype(np.int64)))
        for w in windows.values():
            dense = dense_scores(q_emb, p_emb, remap(w[0]))
            valid = w[0] >= 0
            for name, value, rule in (
                ("denoise_threshold", settings.denoise_threshold, near_positive),
                ("max_score_ratio", settings.max_score_ratio, above_ratio),
            ):
                if value is not None:
                    drop = rule(dense, value, reference) & valid & w[2]
                    stats["filtered"][name] += int(drop.sum())
                    w[2] &= ~drop
    if ce_filter is not None:
        stats["filtered"]["cross_encoder"] = 0
        for w in windows.values():
            drop = ce_filter.drop_mask(qids, np.where(w[2], w[0], -1), offsets, pos) & (w[0] >= 0) & w[2]
            stats["filtered"]["cross_encoder"] += int(drop.sum())
            w[2] &= ~drop
    negatives = []
    wanted = sum(settings.counts.values())
    for i in tqdm(range(len(qids)), desc="mine", disable=not progress, dynamic_ncols=True):
        rng = np.random.default_rng([settings.seed, i])
        chosen: list[tuple[int, int, float, str]] = []
        taken: set[int] = set()
        for source, count in settings.counts.items():
            rows, scores, keep = (x[i] for x in windows[source])
            cols = np.flatnonzero(keep & (rows >= 0))
            fresh = [c for c in cols.tolist() if rows[c] not in taken]
            stats["repeated_across_sources"] += len(cols) - len(fresh)
            if count and len(fresh) > count:
                fresh = sorted(rng.choice(fresh, size=count, replace=False).tolist())
            for c in fresh:
                chosen.append((int(rows[c]), a + c + 1, float(scores[c]), source))
                taken.add(int(rows[c]))
        stats["short_queries"] += bool(wanted) and len(chosen) < wanted
        negatives.append(chosen)
    return Mined(qids, negatives, stats)


def tevatron_records(
    corpus, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], mined: Mined
) -> Iterator[dict]:
    """Tevatron JSONL records of `mined`: positives from the qrels (relevance > 0, qrels order), negatives with
    their rank, score and source."""

    def passage(row: int) -> dict:
        return {"docid": corpus.ids[row], "title": corpus.titles[row], "text": corpus.texts[row]}

    for qid, negs in zip(mined.qids, mined.negatives):
        yield {
            "query_id": qid,
            "query": queries[qid],
            "positive_passages": [passage(corpus.index[d]) for d, r in qrels[qid].items() if r > 0],
            "negative_passages": [
                {**passage(row), "rank": rank, "score": score, "source": source} for row, rank, score, source in negs
            ],
        }


def mine_to_jsonl(
    path,
    corpus,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    settings: MineSettings,
    *,
    scorer: DenseScorer | None = None,
    progress: bool = True,
    ce_filter=None,
) -> dict:
    """`mine_negatives`, then write the Tevatron JSONL to `path` atomically; returns the summary."""
    from jdr.data.tevatron import write_tevatron

    mined = mine_negatives(corpus, queries, qrels, settings, scorer=scorer, progress=progress, ce_filter=ce_filter)
    write_tevatron(path, tevatron_records(corpus, queries, qrels, mined))
    return {
        **mined.summary(),
        "output": str(path),
        "sources": dict(settings.counts),
        "depth": settings.depth,
        "sample_range": list(settings.window),
        "seed": settings.seed,
    }
