"""The ANCE refresh's build: re-encode the corpus and the training queries with a params snapshot, index, re-mine
the dense sources (`ann`, `memory`) and return the next `NegativesTable`. Pure of training: no steps, threads or
hosts (those are `jdr.train.refresh.RefreshHook`'s); `ann_build_fn` returns the `build_fn(params, step)` it calls.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jdr.negatives.ann import ann_index, ann_search
from jdr.negatives.sources import denoise_ranked
from jdr.negatives.table import NegativesTable


@dataclasses.dataclass(frozen=True)
class AnnRefreshConfig:
    """Settings of `ann_build_fn` (names follow the `negatives.*` config keys).

    `depth`: candidates kept per query. `factory`/`nprobe`/`train_sample`: the faiss index. `refresh_fraction`:
    share of training queries re-mined per round, rotating over a seeded partition (others keep their rows).
    `skip_top`/`denoise_threshold`: see `sources.denoise_ranked`. `candidate_filter`: a cross-encoder filter
    (`jdr.negatives.ce_denoise.CrossEncoderFilter`, RocketQA) applied to the re-mined queries' candidates after
    that, its drops counted in `table.timings["ce_dropped"]`. `counts`: the per-source sampling counts of
    the refreshed tables, naming `ann` and/or `memory` (e.g. {"bm25": 1, "ann": 3} after an all-bm25 warm start;
    the other ranked sources keep the previous table's candidates). Default: the previous table's counts when
    they name `ann` or `memory`, else all of its negatives from `ann`.
    """

    depth: int = 200
    factory: str = "Flat"
    nprobe: int | None = None
    train_sample: int | None = None
    refresh_fraction: float = 1.0
    skip_top: int = 0
    denoise_threshold: float | None = None
    counts: Mapping[str, int] | None = None
    seed: int = 0
    candidate_filter: Any = None


DENSE = ("ann", "memory")  # the sources a refresh re-mines with the model being trained


def ann_build_fn(
    encode_corpus_fn: Callable[[Any], np.ndarray],
    encode_queries_fn: Callable[[Any, Sequence[str]], np.ndarray],
    corpus,
    train_qids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    cfg: AnnRefreshConfig,
    *,
    initial: NegativesTable,
    memory=None,
) -> Callable[[Any, int], NegativesTable]:
    """A `build_fn` for `RefreshHook`: encode the corpus with the params snapshot (`encode_corpus_fn(params) ->
    [N, d]`, corpus row order) and the training queries (`encode_queries_fn(params, qids) -> [len(qids), d]`),
    then re-mine every dense source the counts name: `ann` (faiss index over the corpus, top-k) and `memory`
    (`memory`, a `jdr.negatives.memory.MemoryNegatives`: the re-encoded corpus plus its fixed augmentation
    memories), each replacing its candidates in the previous table (starting at `initial`; a hybrid keeps its
    other sources). Timings `encode_s`, `index_s`, `mine_s` go into `table.timings`."""
    if tuple(train_qids) != initial.qids or tuple(corpus.ids) != initial.corpus_ids:
        raise ValueError("ann_build_fn: train_qids / corpus differ from the initial negatives table's")
    if cfg.counts is not None and not set(DENSE) & set(cfg.counts):
        raise ValueError(f"ann refresh: counts {dict(cfg.counts)} sample no 'ann' or 'memory' negatives")
    if memory is not None and tuple(memory.ids) != initial.memory_ids:
        raise ValueError("ann_build_fn: the memories' documents differ from the initial negatives table's")
    if not 0.0 < cfg.refresh_fraction <= 1.0:
        raise ValueError(f"refresh_fraction must be in (0, 1], got {cfg.refresh_fraction}")
    del qrels  # positives come from `initial`, which was built from (and checked against) these qrels
    qids = list(initial.qids)
    chunks = math.ceil(1.0 / cfg.refresh_fraction)
    part = np.random.default_rng(cfg.seed).permutation(len(qids)) % chunks  # seeded partition of the queries
    # The rotation round is the previous table's version (the warm start is v0, each refresh adds one), so it is
    # checkpointed with the table and a resumed run re-mines the same queries as an uninterrupted one.
    state = {"table": initial}
    max_pos = int(np.diff(initial.pos_offsets).max(initial=0))
    k = min(cfg.depth + cfg.skip_top + max_pos, len(initial.corpus_ids))

    def build(params, step: int) -> NegativesTable:
        prev: NegativesTable = state["table"]
        counts = cfg.counts or (prev.counts if set(DENSE) & set(prev.counts) else {"ann": prev.num_negatives})
        dense = [name for name in DENSE if name in counts]
        if "memory" in dense and memory is None:
            raise ValueError("memory refresh: no augmentation memories given")
        mask = None
        if chunks > 1 and all(name in prev.candidates for name in dense):  # a first mining covers every query
            mask = part == prev.version % chunks
        sel = np.arange(len(qids)) if mask is None else np.flatnonzero(mask)
        t0 = time.perf_counter()
        p_emb = np.asarray(encode_corpus_fn(params), dtype=np.float32)
        q_emb = np.asarray(encode_queries_fn(params, [qids[i] for i in sel]), dtype=np.float32)
        if p_emb.shape[0] != len(initial.corpus_ids) or q_emb.shape != (len(sel), p_emb.shape[-1]):
            raise ValueError(
                f"encoders returned passages {p_emb.shape} and queries {q_emb.shape} for "
                f"{len(initial.corpus_ids)} passages and {len(sel)} queries"
            )
        timings = {"encode_s": time.perf_counter() - t0, "index_s": 0.0, "mine_s": 0.0}
        q_full = np.zeros((len(qids), p_emb.shape[1]), dtype=np.float32)
        q_full[sel] = q_emb
        table = prev
        for name in dense:
            t1 = time.perf_counter()
            if name == "ann":
                index = ann_index(p_emb, factory=cfg.factory, train_sample=cfg.train_sample, seed=cfg.seed)
                timings["index_s"] += time.perf_counter() - t1
                t1 = time.perf_counter()
                _, found = ann_search(index, q_emb, k, nprobe=cfg.nprobe)
                scores = None  # corpus rows: denoise scores them from the embeddings, as before memories existed
            else:  # builds the corpus's memory index inside: counted as mining
                offsets, pos = _select_csr(prev.pos_offsets, prev.pos_rows, sel)
                scores, found = memory.mine(
                    q_emb, p_emb, memory.width(cfg.depth + cfg.skip_top), offsets, pos, seed=cfg.seed
                )
            rows = np.full((len(qids), found.shape[1]), -1, dtype=np.int64)
            rows[sel] = found
            if scores is not None:
                full = np.full(rows.shape, np.nan, dtype=np.float32)
                full[sel] = scores
                scores = full
            rows = denoise_ranked(
                rows,
                prev.pos_offsets,
                prev.pos_rows,
                skip_top=cfg.skip_top,
                threshold=cfg.denoise_threshold,
                query_emb=q_full,
                passage_emb=p_emb,
                scores=scores,
            )
            if cfg.candidate_filter is not None:
                t2 = time.perf_counter()
                offsets, pos = _select_csr(prev.pos_offsets, prev.pos_rows, sel)
                rows[sel], dropped = cfg.candidate_filter.filter([qids[i] for i in sel], rows[sel], offsets, pos)
                timings["ce_dropped"] = timings.get("ce_dropped", 0) + dropped
                timings["ce_denoise_s"] = timings.get("ce_denoise_s", 0.0) + time.perf_counter() - t2
            if not (rows[sel] >= 0).any():
                raise ValueError(f"{name} mining found no candidates for {len(sel)} queries")
            timings["mine_s"] += time.perf_counter() - t1
            table = table.replace_candidates(
                name, rows, mask, counts=counts, version=prev.version + 1, created_step=step, timings=timings
            )
        state["table"] = table
        return table

    return build


def _select_csr(offsets: np.ndarray, rows: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR lists `sel` of `(offsets[Q+1], rows)` as their own CSR `(offsets[len(sel)+1], rows)`."""
    counts = np.diff(offsets)[sel]
    out = np.zeros(len(sel) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    picked = [rows[offsets[i] : offsets[i + 1]] for i in sel]
    return out, (np.concatenate(picked) if picked else np.zeros(0, rows.dtype))
