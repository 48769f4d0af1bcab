"""RefreshHook (jdr.train.refresh: sync / async ANCE refresh) and ann_build_fn (jdr.negatives.refresh) on a toy
corpus."""

import threading
import time

import numpy as np
import pytest

from jdr.data.beir import Corpus
from jdr.negatives import AnnRefreshConfig, NegativesTable, ann_build_fn, build_table
from jdr.train.refresh import RefreshError, RefreshHook

N_DOCS, N_QUERIES, DIM = 30, 8, 8


@pytest.fixture(scope="module")
def toy():
    ids = [f"d{i}" for i in range(N_DOCS)]
    corpus = Corpus(ids, [""] * N_DOCS, [f"text {i}" for i in range(N_DOCS)], {d: i for i, d in enumerate(ids)})
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(N_QUERIES)}
    table = build_table({"random": 2}, corpus, {}, qrels, depth=5)
    return corpus, qrels, table


def _fake_build(base: NegativesTable, log=None, delay: threading.Event | None = None):
    """A build_fn mining 'ann' rows that depend on the params (an int seed) and the step."""

    def build(params, step):
        if log is not None:
            log.append((step, type(params["w"])))
        if delay is not None:
            assert delay.wait(10), "test never released the build"
        rng = np.random.default_rng(int(np.asarray(params["w"]).sum()) + step)
        rows = np.stack([rng.permutation(N_DOCS)[:6] for _ in base.qids])
        return base.replace_candidates(
            "ann", rows, counts={"ann": 2}, timings={"encode_s": 0.1, "index_s": 0.2, "mine_s": 0.3}
        )

    return build


def test_sync_refresh_returns_new_tables_at_due_steps(toy):
    _, _, base = toy
    calls = []
    hook = RefreshHook(3, _fake_build(base, calls), mode="sync")
    got = {step: hook.on_step(step, {"w": np.ones(2)}) for step in range(1, 11)}
    assert [s for s, t in got.items() if t is not None] == [3, 6, 9]
    assert [got[s].version for s in (3, 6, 9)] == [1, 2, 3]
    assert [got[s].created_step for s in (3, 6, 9)] == [3, 6, 9]
    assert [r.age_steps for r in hook.history] == [0, 0, 0]
    assert hook.history[0].timings == {"encode_s": 0.1, "index_s": 0.2, "mine_s": 0.3}
    assert hook.history[0].wait_seconds > 0 and hook.finish() is None
    assert got[3].source == "ann" and got[3].counts == {"ann": 2}
    # same params and step -> identical table (sync mode is exactly reproducible)
    again = RefreshHook(3, _fake_build(base), mode="sync")
    t3 = [again.on_step(s, {"w": np.ones(2)}) for s in range(1, 4)][-1]
    assert np.array_equal(t3.candidates["ann"], got[3].candidates["ann"])


def test_async_swap_under_a_running_loop(toy):
    import jax.numpy as jnp

    _, _, base = toy
    release, calls = threading.Event(), []
    hook = RefreshHook(3, _fake_build(base, calls, release), mode="async", initial_version=4)
    lazy_calls = []

    def params():
        lazy_calls.append(1)
        return {"w": jnp.ones(2)}

    table, swapped_at = base, None
    for step in range(1, 40):
        new = hook.on_step(step, params)
        if step == 8:  # the loop kept stepping while the build was blocked; now let it finish
            assert hook.running and table is base
            release.set()
        if new is not None:
            assert swapped_at is None, "one build, one swap"
            table, swapped_at = new, step
            break
        time.sleep(0.02)
    assert swapped_at is not None and swapped_at >= 8
    assert table.version == 5 and table.created_step == 3
    # every refresh due while the step-3 build still ran (6, maybe 9 on a loaded machine) was skipped, not queued
    assert hook.skipped_steps == list(range(6, swapped_at, 3))
    # params are fetched only at refresh steps that start a build: 3, and `swapped_at` if a multiple of 3
    assert len(lazy_calls) == 1 + (swapped_at % 3 == 0)
    rec = hook.history[-1]
    assert (rec.version, rec.started_step, rec.swapped_step, rec.age_steps) == (5, 3, swapped_at, swapped_at - 3)
    assert rec.build_seconds > 0.1  # it waited on the event for at least the 5 blocked steps
    hook.finish()  # a build started at `swapped_at` may not have reached its first line yet (a loaded machine)
    assert calls[0] == (3, np.ndarray) and len(calls) == len(lazy_calls)  # builds see host copies


def test_finish_joins_the_running_build(toy):
    _, _, base = toy
    release = threading.Event()
    hook = RefreshHook(2, _fake_build(base, delay=release), mode="async")
    assert hook.on_step(2, {"w": np.zeros(2)}) is None
    threading.Timer(0.2, release.set).start()
    table = hook.finish()
    assert table is not None and table.version == 1 and not hook.running
    assert hook.history[-1].wait_seconds >= 0.15
    assert hook.finish() is None


def test_wait_swaps_in_a_build_that_finishes_within_the_grace(toy):
    _, _, base = toy
    release = threading.Event()
    hook = RefreshHook(2, _fake_build(base, delay=release), mode="async", initial_version=3)
    assert hook.on_step(2, {"w": np.zeros(2)}) is None and hook.on_step(3, {"w": np.zeros(2)}) is None
    assert hook.in_flight == 2  # what a checkpoint of step 3 would record as owed
    threading.Timer(0.1, release.set).start()
    table = hook.wait(30)  # a preemption at step 3: the next poll never comes
    assert table is not None and (table.version, table.created_step) == (4, 2)
    assert hook.in_flight is None and not hook.running
    rec = hook.history[-1]
    assert (rec.started_step, rec.swapped_step, rec.owed_from) == (2, 3, None)


def test_wait_past_the_grace_returns_nothing_and_leaves_the_build_running(toy):
    _, _, base = toy
    release = threading.Event()
    hook = RefreshHook(2, _fake_build(base, delay=release), mode="async")
    hook.on_step(2, {"w": np.zeros(2)})
    assert hook.wait(0.05) is None and hook.wait(0) is None
    assert hook.running and hook.in_flight == 2 and not hook.history
    release.set()
    assert hook.finish().version == 1  # still delivered once done: nothing was thrown away


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_owed_refresh_starts_at_the_first_step_then_the_cadence_resumes(toy, mode):
    _, _, base = toy
    calls = []
    # resumed after step 4 from a checkpoint saved while the build from step 3 was in flight
    hook = RefreshHook(3, _fake_build(base, calls), mode=mode, owed=3)
    first = hook.on_step(5, {"w": np.zeros(2)})  # 5 is no multiple of 3: only the debt starts a refresh here
    assert calls and calls[0][0] == 5
    if mode == "async":
        assert first is None and hook.in_flight == 5
        first = hook.finish()
    assert first.created_step == 5 and first.version == 1
    assert hook.history[0].owed_from == 3 and hook.history[0].metrics()["owed_from"] == 3
    second = hook.on_step(6, {"w": np.zeros(2)})  # the cadence goes on: 6 is due
    if mode == "async":
        assert second is None
        second = hook.finish()
    assert second.created_step == 6 and [c[0] for c in calls] == [5, 6]
    assert [r.owed_from for r in hook.history] == [3, None]  # the debt is paid once
    assert hook.totals()["owed"] == 1
    assert hook.on_step(7, {"w": np.zeros(2)}) is None and len(calls) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_failing_build_raises_in_training_thread_naming_the_step(toy, mode):
    def build(params, step):
        raise OSError("disk full while encoding")

    hook = RefreshHook(5, build, mode=mode)
    with pytest.raises(RefreshError, match=r"negatives refresh for step 5 failed: OSError: disk full") as err:
        for step in range(1, 100):  # async: a later poll collects the failure; the loop need not call finish()
            assert hook.on_step(step, {"w": np.zeros(1)}) is None
            time.sleep(0.01)
    assert isinstance(err.value.__cause__, OSError)
    assert step == 5 if mode == "sync" else 5 < step < 100


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_empty_result_is_an_error(toy, mode):
    _, _, base = toy
    empty = base.replace_candidates("ann", np.full((N_QUERIES, 4), -1), counts={"ann": 1})
    hook = RefreshHook(1, lambda p, s: empty, mode=mode)
    with pytest.raises(RefreshError, match="step 1 failed: the new table has no candidates"):
        hook.on_step(1, {})
        hook.finish()
    hook = RefreshHook(1, lambda p, s: None, mode=mode)
    with pytest.raises(RefreshError, match="step 1 failed: the build returned NoneType"):
        hook.on_step(1, {})
        hook.finish()


def _encoders(p_emb_by_param, q_emb_by_param, qids):
    def enc_corpus(params):
        return p_emb_by_param[params["id"]]

    def enc_queries(params, which):
        return q_emb_by_param[params["id"]][[qids.index(q) for q in which]]

    return enc_corpus, enc_queries


def _brute_force(q, p, qid_index, depth):
    order = np.argsort(-(q @ p.T), axis=1, kind="stable")
    return [[int(r) for r in order[i] if r != i][:depth] for i in qid_index]  # doc i is query i's positive


def test_ann_build_fn_full_and_partial_refresh(toy):
    corpus, qrels, base = toy
    rng = np.random.default_rng(0)
    p = {k: rng.normal(size=(N_DOCS, DIM)).astype(np.float32) for k in (0, 1)}
    q = {k: rng.normal(size=(N_QUERIES, DIM)).astype(np.float32) for k in (0, 1)}
    qids = list(base.qids)
    enc_c, enc_q = _encoders(p, q, qids)
    cfg = AnnRefreshConfig(depth=5, refresh_fraction=0.5, seed=3)
    build = ann_build_fn(enc_c, enc_q, corpus, qids, qrels, cfg, initial=base)
    hook = RefreshHook(10, build, mode="sync", initial_version=base.version)

    t1 = hook.on_step(10, {"id": 0})  # the initial table has no ann rows: every query is mined
    assert t1.counts == {"ann": 2} and t1.source == "ann" and t1.version == 1
    assert [t1.candidates["ann"][i, :5].tolist() for i in range(N_QUERIES)] == _brute_force(
        q[0], p[0], range(N_QUERIES), 5
    )
    assert set(hook.history[-1].timings) == {"encode_s", "index_s", "mine_s"}

    t2 = hook.on_step(20, {"id": 1})  # half the queries re-mined with the new model, the rest kept
    fresh = _brute_force(q[1], p[1], range(N_QUERIES), 5)
    old = _brute_force(q[0], p[0], range(N_QUERIES), 5)
    rows = [t2.candidates["ann"][i, :5].tolist() for i in range(N_QUERIES)]
    changed = [i for i in range(N_QUERIES) if rows[i] == fresh[i] and rows[i] != old[i]]
    kept = [i for i in range(N_QUERIES) if rows[i] == old[i]]
    assert len(changed) == N_QUERIES // 2 and sorted(changed + kept) == list(range(N_QUERIES))
    t3 = hook.on_step(30, {"id": 1})  # the other half follows in the next round
    assert [t3.candidates["ann"][i, :5].tolist() for i in range(N_QUERIES)] == fresh
    assert t3.version == 3


def test_ann_build_fn_rejects_broken_embeddings(toy):
    corpus, qrels, base = toy
    qids = list(base.qids)
    nan = np.full((N_DOCS, DIM), np.nan, dtype=np.float32)
    build = ann_build_fn(
        lambda params: nan,
        lambda params, w: np.zeros((len(w), DIM), np.float32),
        corpus,
        qids,
        qrels,
        AnnRefreshConfig(depth=5),
        initial=base,
    )
    with pytest.raises(RefreshError, match="step 4 failed: ValueError: ann: passage embeddings hold NaN"):
        RefreshHook(4, build, mode="sync").on_step(4, {})
    empty = ann_build_fn(
        lambda params: np.zeros((0, DIM), np.float32),
        lambda params, w: np.zeros((len(w), DIM)),
        corpus,
        qids,
        qrels,
        AnnRefreshConfig(depth=5),
        initial=base,
    )
    with pytest.raises(RefreshError, match="step 4 failed"):
        RefreshHook(4, empty, mode="sync").on_step(4, {})


def test_ann_refresh_after_bm25_warm_start_keeps_bm25_rows(toy):
    corpus, qrels, _ = toy
    queries = {q: f"word{i} word{i + 1}" for i, q in enumerate(sorted(qrels))}
    texts = Corpus(corpus.ids, corpus.titles, [f"text word{i}" for i in range(N_DOCS)], corpus.index)
    warm = build_table({"bm25": 3}, texts, queries, qrels, depth=5)
    qids = list(warm.qids)
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(N_DOCS, DIM)), rng.normal(size=(N_QUERIES, DIM))
    enc_c, enc_q = _encoders({0: p}, {0: q}, qids)
    cfg = AnnRefreshConfig(depth=5, counts={"bm25": 1, "ann": 2})
    build = ann_build_fn(enc_c, enc_q, texts, qids, qrels, cfg, initial=warm)
    new = RefreshHook(1, build, mode="sync").on_step(1, {"id": 0})
    assert new.counts == {"ann": 2, "bm25": 1} and new.source == "hybrid"
    assert np.array_equal(new.candidates["bm25"], warm.candidates["bm25"])
    assert [new.candidates["ann"][i, :5].tolist() for i in range(N_QUERIES)] == _brute_force(q, p, range(N_QUERIES), 5)
    with pytest.raises(ValueError, match="sample no 'ann'"):
        ann_build_fn(enc_c, enc_q, texts, qids, qrels, AnnRefreshConfig(counts={"bm25": 3}), initial=warm)
