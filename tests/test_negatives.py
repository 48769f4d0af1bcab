"""NegativesTable and its sources on a toy corpus (30 docs, 8 training queries)."""

import dataclasses

import numpy as np
import pytest

from jdr.data.beir import Corpus
from jdr.negatives import NegativesTable, build_table, parse_counts, source_counts
from jdr.negatives.denoise import denoise, positive_scores
from jdr.negatives.sources import gold_candidates
from jdr.negatives.table import clean_candidates, positives_csr

N_DOCS, N_QUERIES, DIM = 30, 8, 16


@pytest.fixture(scope="module")
def toy():
    """Doc i holds the unique term `uniq{i}`; query i asks for `uniq{i} uniq{i+10}`: doc i is its positive and
    doc i+10 the exact-term non-positive BM25 must rank first. Query 0 has two positives (docs 0 and 20)."""
    ids = [f"d{i}" for i in range(N_DOCS)]
    titles = [f"title{i % 5}" for i in range(N_DOCS)]
    texts = [f"uniq{i} shared filler text about topic{i % 3}" for i in range(N_DOCS)]
    corpus = Corpus(ids, titles, texts, {d: i for i, d in enumerate(ids)})
    queries = {f"q{i}": f"uniq{i} uniq{i + 10}" for i in range(N_QUERIES)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(N_QUERIES)}
    qrels["q0"]["d20"] = 2
    qrels["q1"]["d25"] = 0  # judged non-relevant: not a positive, may be served
    rng = np.random.default_rng(0)
    emb = {
        "q": rng.normal(size=(N_QUERIES, DIM)).astype(np.float32),
        "p": rng.normal(size=(N_DOCS, DIM)).astype(np.float32),
    }
    return corpus, queries, qrels, emb


def _positives(qrels, qid):
    return {d for d, r in qrels[qid].items() if r > 0}


def _table(toy, counts, depth=5, **kw):
    corpus, queries, qrels, emb = toy
    return build_table(counts, corpus, queries, qrels, depth=depth, query_emb=emb["q"], passage_emb=emb["p"], **kw)


ALL_SOURCES = [
    {"random": 3},
    {"gold": 3},
    {"bm25": 3},
    {"ann": 3},
    {"bm25": 1, "ann": 2, "random": 1},
    {"gold": 1, "bm25": 2},
]


@pytest.mark.parametrize("counts", ALL_SOURCES, ids=lambda c: "+".join(c))
def test_positives_never_served_and_exact_count(toy, counts):
    table = _table(toy, counts)
    qrels = toy[2]
    for seed in range(40):
        rng = np.random.default_rng(seed)
        for qid in table.qids:
            negs = table.sample(qid, rng)
            assert len(negs) == sum(counts.values()) == table.num_negatives
            assert len(set(negs)) == len(negs)
            assert not set(negs) & _positives(qrels, qid), (qid, negs)
    for name in table.candidates:  # stored candidates are clean too
        for qid in table.qids:
            assert not set(table.ranked(qid, name)) & _positives(qrels, qid)


@pytest.mark.parametrize("counts", ALL_SOURCES, ids=lambda c: "+".join(c))
def test_sampling_is_deterministic_per_seed_and_differs_across_seeds(toy, counts):
    table = _table(toy, counts, depth=8)
    draw = lambda seed: [table.sample(q, np.random.default_rng(seed)) for q in table.qids]  # noqa: E731
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_hybrid_draws_exact_per_source_counts(toy):
    table = _table(toy, {"bm25": 1, "ann": 2, "random": 1}, depth=4)
    assert table.source == "hybrid"
    assert table.candidates["ann"].shape[1] > 4  # more stored than sampled from
    ann_seen = {qid: set() for qid in table.qids}
    for seed in range(30):
        rng = np.random.default_rng(seed)
        for qid in table.qids:
            negs = table.sample(qid, rng)
            ann_seen[qid].update(negs[:2])
            top = {name: set(table.ranked(qid, name)[:4]) for name in ("ann", "bm25")}
            # sorted source order: ann (2), bm25 (1), random (1)
            assert set(negs[:2]) <= top["ann"]
            if len(top["bm25"] - set(negs[:2])) >= 1:
                assert negs[2] in top["bm25"]
    assert all(ann_seen[q] == set(table.ranked(q, "ann")[:4]) for q in table.qids)  # uniform over top-depth


def test_short_lists_are_topped_up_with_random_non_positives(toy):
    corpus, _, qrels, _ = toy
    qids = sorted(qrels)
    rows = np.full((len(qids), 5), -1)
    rows[:, 0] = 29  # one candidate per query; 4 negatives asked
    table = NegativesTable.create(qids, corpus.ids, qrels, {"bm25": rows}, {"bm25": 4}, depth=5)
    seen_random = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for qid in qids:
            negs = table.sample(qid, rng)
            assert negs[0] == "d29" and len(set(negs)) == 4
            assert not set(negs) & _positives(qrels, qid)
            seen_random.update(negs[1:])
    assert len(seen_random) > 10  # top-up spreads over the corpus


def test_bm25_ranks_exact_term_match_first_and_skip_top_drops_it(toy):
    table = _table(toy, {"bm25": 1})
    for i in range(1, N_QUERIES):  # q0's second positive is d20; d10 still ranks first among its negatives
        ranked = table.ranked(f"q{i}", "bm25")
        assert ranked[0] == f"d{i + 10}", ranked
        assert f"d{i}" not in ranked
    skipped = _table(toy, {"bm25": 1}, skip_top=1)
    for i in range(1, N_QUERIES):
        plain, skip = table.ranked(f"q{i}", "bm25"), skipped.ranked(f"q{i}", "bm25")
        assert f"d{i + 10}" not in skip
        assert skip[: len(plain) - 1] == plain[1:]


def test_bm25_drops_docs_sharing_no_term(toy):
    corpus, queries, qrels, _ = toy
    queries = dict(queries, q2="uniq2 nothingmatcheshere")  # matches only its own positive
    table = build_table({"bm25": 2}, corpus, queries, qrels, depth=10)
    assert table.ranked("q2", "bm25") == []
    assert len(table.sample("q2", np.random.default_rng(0))) == 2  # topped up with random docs


def test_ann_equals_numpy_brute_force(toy):
    corpus, _, qrels, emb = toy
    depth = 6
    table = _table(toy, {"ann": 2}, depth=depth)
    scores = emb["q"] @ emb["p"].T
    for i, qid in enumerate(table.qids):
        order = [corpus.ids[j] for j in np.argsort(-scores[i], kind="stable")]
        expected = [d for d in order if d not in _positives(qrels, qid)]
        assert table.ranked(qid, "ann")[:depth] == expected[:depth]
    assert set(table.timings) == {"ann_s"}


def test_gold_uses_other_queries_positives(toy):
    corpus, _, qrels, _ = toy
    table = _table(toy, {"gold": 2}, depth=20)
    pool = {d for q in qrels for d in _positives(qrels, q)}
    for qid in table.qids:
        ranked = table.ranked(qid, "gold")
        assert set(ranked) == pool - _positives(qrels, qid)
    qids = sorted(qrels)
    a, b = (gold_candidates(qids, qrels, corpus.index, 5, seed) for seed in (0, 1))
    assert np.array_equal(a, gold_candidates(qids, qrels, corpus.index, 5, 0)) and not np.array_equal(a, b)


def test_denoise_threshold_and_skip_top():
    rows = np.array([[5, 6, 7, 8, -1], [1, 2, 3, -1, -1]])
    scores = np.array([[0.9, 0.5, 0.8, 0.1, np.nan], [0.2, 0.95, 0.3, np.nan, np.nan]])
    assert denoise(rows, skip_top=2).tolist() == [[7, 8, -1, -1, -1], [3, -1, -1, -1, -1]]
    assert denoise(rows, scores=scores, threshold=0.7).tolist() == [[6, 8, -1, -1, -1], [1, 3, -1, -1, -1]]
    # relative to the positive's score: drop candidates scoring >= reference - threshold
    ref = np.array([1.0, np.nan])
    assert denoise(rows, scores=scores, threshold=0.15, reference=ref).tolist() == [
        [6, 7, 8, -1, -1],
        [1, 2, 3, -1, -1],
    ]
    assert denoise(rows, skip_top=1, scores=scores, threshold=0.85).tolist() == [[6, 7, 8, -1, -1], [3, -1, -1, -1, -1]]
    with pytest.raises(ValueError, match="teacher scores"):
        denoise(rows, threshold=0.5)


def test_dense_denoise_in_build_table_drops_near_positive_candidates(toy):
    corpus, _, qrels, emb = toy
    plain = _table(toy, {"ann": 1}, depth=N_DOCS)
    strict = _table(toy, {"ann": 1}, depth=N_DOCS, denoise_threshold=0.0)
    offsets, pos = positives_csr(plain.qids, qrels, corpus.index)
    ref = positive_scores(emb["q"], emb["p"], offsets, pos)
    for i, qid in enumerate(plain.qids):
        kept = strict.ranked(qid, "ann")
        expected = [d for d in plain.ranked(qid, "ann") if emb["q"][i] @ emb["p"][corpus.index[d]] < ref[i]]
        assert kept == expected
    assert any(len(strict.ranked(q, "ann")) < len(plain.ranked(q, "ann")) for q in plain.qids)


def test_round_trip_through_arrays(toy, tmp_path):
    import orbax.checkpoint as ocp

    corpus, _, qrels, _ = toy
    table = dataclasses.replace(_table(toy, {"bm25": 1, "ann": 2, "random": 1}), version=4, created_step=120)
    arrays = table.to_arrays()
    for leaf in [arrays["meta"], *arrays["candidates"].values(), *arrays["counts"].values()]:
        assert np.issubdtype(leaf.dtype, np.integer)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "neg", arrays)
    ckpt.wait_until_finished()
    back = NegativesTable.from_arrays(ckpt.restore(tmp_path / "neg"), corpus.ids, qrels)
    assert (back.version, back.created_step, back.source, back.depth, dict(back.counts)) == (
        4,
        120,
        "hybrid",
        table.depth,
        dict(table.counts),
    )
    assert back.qids == table.qids
    for name in table.candidates:
        assert np.array_equal(back.candidates[name], table.candidates[name])
    for qid in table.qids:
        assert back.sample(qid, np.random.default_rng(7)) == table.sample(qid, np.random.default_rng(7))
    random_only = _table(toy, {"random": 2})
    assert NegativesTable.from_arrays(random_only.to_arrays(), corpus.ids, qrels).counts == {"random": 2}
    other = {q: dict(v) for q, v in qrels.items()}
    other["q3"] = {"d4": 1}
    with pytest.raises(ValueError, match="q3"):
        NegativesTable.from_arrays(arrays, corpus.ids, other)
    with pytest.raises(ValueError, match="corpus of 30"):
        NegativesTable.from_arrays(arrays, corpus.ids[:-1], qrels)


def test_table_is_immutable_and_validated(toy):
    corpus, _, qrels, _ = toy
    table = _table(toy, {"bm25": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.version = 3
    with pytest.raises(ValueError):
        table.candidates["bm25"][0, 0] = 1
    with pytest.raises(TypeError):
        table.candidates["ann"] = table.candidates["bm25"]
    offsets, pos = positives_csr(table.qids, qrels, corpus.index)
    bad = np.array(table.candidates["bm25"])
    bad[3, 0] = corpus.index["d3"]  # q3's positive
    with pytest.raises(ValueError, match="positive"):
        NegativesTable(table.qids, corpus.ids, offsets, pos, {"bm25": bad}, {"bm25": 2}, 5)
    gap = np.array(table.candidates["bm25"])
    gap[3, :2] = [-1, corpus.index["d20"]]
    with pytest.raises(ValueError, match="-1 before a candidate"):
        NegativesTable(table.qids, corpus.ids, offsets, pos, {"bm25": gap}, {"bm25": 2}, 5)
    with pytest.raises(ValueError, match="candidates for sources"):
        NegativesTable(table.qids, corpus.ids, offsets, pos, {}, {"bm25": 2}, 5)
    with pytest.raises(KeyError, match="qX"):
        table.sample("qX", np.random.default_rng(0))


def test_clean_candidates_removes_positives_repeats_and_gaps():
    offsets, pos = np.array([0, 1, 1]), np.array([4], dtype=np.int32)
    rows = np.array([[4, 2, -1, 2, 7], [3, 3, 4, -1, 0]])
    assert clean_candidates(rows, offsets, pos, 4).tolist() == [[2, 7, -1, -1], [3, 4, 0, -1]]


def test_counts_from_config():
    assert parse_counts("bm25:1, ann:3") == {"bm25": 1, "ann": 3}
    assert source_counts("hybrid", 4, "bm25:1,ann:3") == {"bm25": 1, "ann": 3}
    assert source_counts("gold", 2) == {"gold": 2}
    for bad in ("bm25", "bm25:x", "foo:1", "bm25:1,bm25:2", ""):
        with pytest.raises(ValueError, match="negatives.hybrid"):
            parse_counts(bad)
    with pytest.raises(ValueError, match="sums to 4"):
        source_counts("hybrid", 3, "bm25:1,ann:3")
    with pytest.raises(ValueError, match="negatives.source"):
        source_counts("dense", 1)


def test_ann_ivf_with_full_probe_matches_flat(toy):
    flat = _table(toy, {"ann": 1}, depth=6)
    ivf = _table(toy, {"ann": 1}, depth=6, factory="IVF2,Flat", nprobe=2)  # probing every list is exact
    for qid in flat.qids:
        assert ivf.ranked(qid, "ann")[:6] == flat.ranked(qid, "ann")[:6]
