"""ANCE-style refresh of hard negatives during training: snapshot params, encode, index, mine, swap table vN+1.

`RefreshHook.on_step(step, params)` is polled by the training loop after every step. In "sync" mode a refresh
runs right there (bit-reproducible runs). In "async" mode it runs in a background thread on a host copy of the
params while training continues on the previous table (ANCE's design), and a later `on_step` hands back the
finished table; the loop swaps its reference between steps, so the swap is atomic. One build at a time: a
refresh that falls due while the previous one still runs is SKIPPED (logged, counted in `skipped_steps`), so
training never stalls on a slow build; the running build's table is delivered as usual.

Multi-host: every host builds its own copy, but no host decides alone. Whether a finished async build is swapped
in at a step is process 0's call (its thread's state, broadcast through the coordination service's key-value
store; the others wait for their own build to finish and swap at the same step), so every host trains on the
same table from the same step and skips the same refreshes. A build that fails on any host raises `RefreshError`
on every host (`jdr.distributed.raise_if_any_failed`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jdr.negatives.ann import ann_index, ann_search
from jdr.negatives.sources import denoise_ranked
from jdr.negatives.table import NegativesTable

log = logging.getLogger(__name__)


class RefreshError(RuntimeError):
    """A negatives refresh failed; raised in the training thread, naming the step the refresh started at."""


@dataclasses.dataclass(frozen=True)
class RefreshRecord:
    """One delivered refresh. `age_steps` = swapped_step - started_step (the staleness ANCE trades for speed);
    `wait_seconds` = time the training loop spent on it (param snapshot + joins; the whole build in sync mode)."""

    version: int
    started_step: int
    swapped_step: int
    age_steps: int
    wait_seconds: float
    build_seconds: float
    timings: Mapping[str, float]

    def metrics(self) -> dict[str, float]:
        """Flat floats for the metrics writer (prefix e.g. "negatives")."""
        return {"version": self.version, "age_steps": self.age_steps, "wait_seconds": self.wait_seconds,
                "build_seconds": self.build_seconds, **self.timings}


class _Job:
    """One background build: runs `build_fn(snapshot, step)` and keeps its table or its exception."""

    def __init__(self, build_fn, snapshot, step: int, wait_seconds: float):
        self.step, self.wait_seconds = step, wait_seconds
        self.table: NegativesTable | None = None
        self.error: BaseException | None = None
        self.build_seconds = 0.0
        self.thread = threading.Thread(target=self._run, args=(build_fn, snapshot), daemon=True,
                                       name=f"jdr-negatives-refresh-{step}")
        self.thread.start()

    def _run(self, build_fn, snapshot):
        t0 = time.perf_counter()
        try:
            self.table = build_fn(snapshot, self.step)
        except BaseException as e:  # re-raised in the training thread by RefreshHook
            self.error = e
        self.build_seconds = time.perf_counter() - t0


class RefreshHook:
    """Rebuild the negatives table every `every` steps with `build_fn(params, step) -> NegativesTable`.

    The hook stamps each delivered table with `version` (initial_version + 1, + 2, ...) and `created_step` (the
    step its params come from). Failures and empty tables raise `RefreshError("negatives refresh for step N
    failed: ...")` in the training thread, on the `on_step`/`finish` that collects them: never a silently stale
    table. `history` holds a `RefreshRecord` per delivered table.
    """

    needs_metrics = False  # polling after every step must not force a device sync

    def __init__(self, every: int, build_fn: Callable[[Any, int], NegativesTable], *, mode: str = "async",
                 initial_version: int = 0):
        if every < 1:
            raise ValueError(f"refresh every must be >= 1, got {every}")
        if mode not in ("async", "sync"):
            raise ValueError(f"refresh mode must be 'async' or 'sync', got {mode!r}")
        self.every, self.build_fn, self.mode = every, build_fn, mode
        self.version = initial_version
        self.history: list[RefreshRecord] = []
        self.skipped_steps: list[int] = []
        self._job: _Job | None = None
        self._last_step = 0

    @property
    def running(self) -> bool:
        """Whether a background build is in flight."""
        return self._job is not None

    def on_step(self, step: int, params) -> NegativesTable | None:
        """Call after each training step. `params` is the unreplicated params pytree, or a zero-argument function
        returning it (called only at refresh steps, so polling costs nothing). Returns a new table to swap in,
        or None."""
        self._last_step = step
        out = None
        if self._job is not None and self._swap_now(step):
            out = self._collect(step)
        if step > 0 and step % self.every == 0:
            fetch = params if callable(params) else (lambda: params)
            if self.mode == "sync":
                t0 = time.perf_counter()
                table, error = None, None
                try:
                    table = self.build_fn(fetch(), step)
                except Exception as e:
                    error = e
                self._agree(step, table, error)
                elapsed = time.perf_counter() - t0
                out = self._deliver(table, step, step, elapsed, elapsed)
            elif self._job is not None:
                self.skipped_steps.append(step)
                log.warning("negatives refresh at step %d skipped: the refresh from step %d is still running",
                            step, self._job.step)
            else:
                import jax  # host copy now, before the next step donates the device buffers

                t0 = time.perf_counter()
                snapshot = jax.device_get(fetch())
                self._job = _Job(self.build_fn, snapshot, step, time.perf_counter() - t0)
        return out

    def finish(self) -> NegativesTable | None:
        """Wait for an in-flight build and return its table (None if none): call before a checkpoint or at the
        end of training for sync semantics (every host, at the same step). Raises `RefreshError` if the build
        failed on any host."""
        if self._job is None:
            return None
        return self._collect(self._last_step)

    def totals(self) -> dict:
        """Summed over the delivered refreshes: the builds' encode / index / mine seconds (in a background thread
        when async), the loop's wait for them, and how many were built and skipped."""
        out = {"mode": self.mode, "builds": len(self.history), "skipped": len(self.skipped_steps),
               "loop_wait_seconds": round(sum(r.wait_seconds for r in self.history), 3),
               "build_seconds": round(sum(r.build_seconds for r in self.history), 3)}
        for key in ("encode_s", "index_s", "mine_s"):
            out[key[:-2] + "_seconds"] = round(sum(r.timings.get(key, 0.0) for r in self.history), 3)
        return out

    def _swap_now(self, step: int) -> bool:
        """Whether the in-flight build is collected at `step`: process 0's thread decides for every host."""
        from jdr.distributed import broadcast_from_primary

        done = not self._job.thread.is_alive()
        return broadcast_from_primary(f"negatives_refresh/{self._job.step}/poll/{step}", "swap" if done else "") \
            == "swap"

    def _agree(self, started: int, table, error: BaseException | None) -> None:
        """Raise `RefreshError` on every host if the build from step `started` failed (or is unusable) on any."""
        from jdr.distributed import raise_if_any_failed

        if error is not None:
            wrapped = RefreshError(f"negatives refresh for step {started} failed: {type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        else:
            error = _invalid(table, started)
        raise_if_any_failed(f"negatives_refresh/{started}/{self.version}", error, RefreshError)

    def _collect(self, step: int) -> NegativesTable:
        job, self._job = self._job, None
        t0 = time.perf_counter()
        job.thread.join()  # done already on process 0; another host may still be finishing its copy
        wait = time.perf_counter() - t0
        self._agree(job.step, job.table, job.error)
        return self._deliver(job.table, job.step, step, job.wait_seconds + wait, job.build_seconds)

    def _deliver(self, table, started: int, swapped: int, wait: float, build_s: float) -> NegativesTable:
        self.version += 1
        table = dataclasses.replace(table, version=self.version, created_step=started)
        rec = RefreshRecord(self.version, started, swapped, swapped - started, wait, build_s,
                            dict(table.timings or {}))
        self.history.append(rec)
        log.info("negatives table v%d (%s) from step %d swapped in at step %d: age %d steps, build %.1fs (%s), "
                 "loop waited %.2fs", rec.version, table.source, started, swapped, rec.age_steps, build_s,
                 ", ".join(f"{k} {v:.1f}s" for k, v in rec.timings.items()), wait)
        return table


def _invalid(table, started: int) -> RefreshError | None:
    """Why a build's result cannot be swapped in, or None."""
    if not isinstance(table, NegativesTable):
        return RefreshError(f"negatives refresh for step {started} failed: the build returned "
                            f"{type(table).__name__}, not a NegativesTable")
    if not table.candidates or not any((c >= 0).any() for c in table.candidates.values()):
        return RefreshError(f"negatives refresh for step {started} failed: the new table has no candidates")
    return None


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


def ann_build_fn(encode_corpus_fn: Callable[[Any], np.ndarray],
                 encode_queries_fn: Callable[[Any, Sequence[str]], np.ndarray], corpus, train_qids: Sequence[str],
                 qrels: Mapping[str, Mapping[str, int]], cfg: AnnRefreshConfig, *, initial: NegativesTable,
                 memory=None) -> Callable[[Any, int], NegativesTable]:
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
            raise ValueError(f"encoders returned passages {p_emb.shape} and queries {q_emb.shape} for "
                             f"{len(initial.corpus_ids)} passages and {len(sel)} queries")
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
                scores, found = memory.mine(q_emb, p_emb, memory.width(cfg.depth + cfg.skip_top), offsets, pos,
                                            seed=cfg.seed)
            rows = np.full((len(qids), found.shape[1]), -1, dtype=np.int64)
            rows[sel] = found
            if scores is not None:
                full = np.full(rows.shape, np.nan, dtype=np.float32)
                full[sel] = scores
                scores = full
            rows = denoise_ranked(rows, prev.pos_offsets, prev.pos_rows, skip_top=cfg.skip_top,
                                  threshold=cfg.denoise_threshold, query_emb=q_full, passage_emb=p_emb, scores=scores)
            if cfg.candidate_filter is not None:
                t2 = time.perf_counter()
                offsets, pos = _select_csr(prev.pos_offsets, prev.pos_rows, sel)
                rows[sel], dropped = cfg.candidate_filter.filter([qids[i] for i in sel], rows[sel], offsets, pos)
                timings["ce_dropped"] = timings.get("ce_dropped", 0) + dropped
                timings["ce_denoise_s"] = timings.get("ce_denoise_s", 0.0) + time.perf_counter() - t2
            if not (rows[sel] >= 0).any():
                raise ValueError(f"{name} mining found no candidates for {len(sel)} queries")
            timings["mine_s"] += time.perf_counter() - t1
            table = table.replace_candidates(name, rows, mask, counts=counts, version=prev.version + 1,
                                             created_step=step, timings=timings)
        state["table"] = table
        return table

    return build


def _select_csr(offsets: np.ndarray, rows: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR lists `sel` of `(offsets[Q+1], rows)` as their own CSR `(offsets[len(sel)+1], rows)`."""
    counts = np.diff(offsets)[sel]
    out = np.zeros(len(sel) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    picked = [rows[offsets[i]:offsets[i + 1]] for i in sel]
    return out, (np.concatenate(picked) if picked else np.zeros(0, rows.dtype))
