"""GroupIterator (jdr.data.groups) and the batch builder (jdr.data.batching)."""

import json
from collections import Counter

import numpy as np
import pytest

from jdr.data.batching import BatchBuilder, PretokenizedTexts
from jdr.data.groups import Group, GroupBatch, GroupIterator
from jdr.models.testing import build_wordpiece_tokenizer, tiny_vocab
from jdr.models.tokenize import bucket_length, token_ids
from jdr.negatives.table import NegativesTable

NUM_DOCS = 60
DOCS = [f"d{i}" for i in range(NUM_DOCS)]


def make_qrels(num_queries=20):
    """q0..q{n-1}; every 3rd query has two positives, q1 has none (rel 0), q2 shares a positive with q4."""
    qrels = {}
    for i in range(num_queries):
        qrels[f"q{i}"] = {f"d{(2 * i) % NUM_DOCS}": 1}
        if i % 3 == 0:
            qrels[f"q{i}"][f"d{(2 * i + 1) % NUM_DOCS}"] = 2
    qrels["q1"] = {"d2": 0}
    qrels["q4"]["d4"] = 1  # q2's positive as well
    return qrels


class FakeTable:
    """Uniform non-positive negatives; `offset` shifts the draw so two tables are distinguishable."""

    def __init__(self, qrels, n, version=0, offset=0):
        self.qrels, self.n, self.version, self.offset = qrels, n, version, offset

    def sample(self, qid, rng):
        pos = {d for d, r in self.qrels[qid].items() if r > 0}
        pool = [d for d in DOCS if d not in pos]
        picks = rng.choice(len(pool), size=self.n, replace=False)
        return [pool[(p + self.offset) % len(pool)] for p in picks]


def make_iter(seed=0, batch=4, n=2, table=None, qrels=None, **kw):
    qrels = qrels or make_qrels()
    table = table or FakeTable(qrels, n)
    return GroupIterator(sorted(qrels), qrels, table, global_batch_size=batch, num_negatives=n, seed=seed, **kw)


def take(it, k):
    return [next(it) for _ in range(k)]


def rows(batches):
    return [g for b in batches for g in b.groups]


def test_deterministic_for_seed_and_seeds_differ():
    a, b, c = make_iter(seed=3), make_iter(seed=3), make_iter(seed=4)
    ra, rb, rc = rows(take(a, 8)), rows(take(b, 8)), rows(take(c, 8))
    assert ra == rb
    assert ra != rc
    assert all(isinstance(g, Group) and len(g.negative_ids) == 2 for g in ra)


def test_every_pair_once_per_epoch_and_epochs_reshuffle():
    qrels = make_qrels()
    it = make_iter(batch=4, unique_in_batch=False)
    pairs = {(q, d) for q, docs in qrels.items() for d, r in docs.items() if r > 0}
    assert it.skipped_queries == 1 and len(it.pairs) == len(pairs) == 27
    steps = it.steps_per_epoch()
    assert steps == 27 // 4  # last incomplete batch dropped
    epoch0 = take(it, steps)
    seen = Counter((g.query_id, g.positive_id) for g in rows(epoch0))
    assert max(seen.values()) == 1 and set(seen) <= pairs and len(seen) == steps * 4
    epoch1 = take(it, steps)
    assert {b.epoch for b in epoch0} == {0} and {b.epoch for b in epoch1} == {1}
    assert [b.index for b in epoch1] == list(range(steps))
    assert rows(epoch0) != rows(epoch1)


def test_unique_in_batch_avoids_repeated_query_and_positive():
    it = make_iter(batch=6, unique_in_batch=True)
    batches = take(it, 3 * it.steps_per_epoch())
    for b in batches:
        assert len({g.query_id for g in b.global_groups}) == 6
        assert len({g.positive_id for g in b.global_groups}) == 6
    epoch0 = [b for b in batches if b.epoch == 0]
    assert max(Counter((g.query_id, g.positive_id) for b in epoch0 for g in b.groups).values()) == 1
    plain = make_iter(batch=6, unique_in_batch=False)
    clashes = [b for b in take(plain, 3 * plain.steps_per_epoch())
               if len({g.query_id for g in b.groups}) < 6 or len({g.positive_id for g in b.groups}) < 6]
    assert clashes  # the data does produce clashes, so the check above means something


@pytest.mark.parametrize("procs", [2, 4])
def test_host_shards_partition_the_global_batch(procs):
    single = take(make_iter(seed=1, batch=8), 7)
    hosts = [take(make_iter(seed=1, batch=8, process_index=p, process_count=procs), 7) for p in range(procs)]
    for step, b in enumerate(single):
        assert [g for h in hosts for g in h[step].groups] == b.groups
        for h in hosts:
            assert len(h[step].groups) == 8 // procs and h[step].global_groups == b.global_groups


def test_state_restore_mid_epoch_continues_identically():
    ref = make_iter(seed=5)
    take(ref, 3)
    state = ref.state()
    state = json.loads(json.dumps(state))  # it goes into a JSON checkpoint item
    expected = take(ref, 10)  # crosses into epoch 1
    resumed = make_iter(seed=5, process_index=1, process_count=2)  # restart on another host layout
    resumed.restore(state)
    got = take(resumed, 10)
    assert [b.global_groups for b in got] == [b.global_groups for b in expected]
    with pytest.raises(ValueError, match="seed=5, this iterator has 6"):
        make_iter(seed=6).restore(state)


def test_negatives_never_positives_with_real_table():
    qrels = make_qrels()
    qids = sorted(q for q, d in qrels.items() if any(r > 0 for r in d.values()))
    train = {q: qrels[q] for q in qids}
    table = NegativesTable.create(qids, DOCS, train, {}, {"random": 3}, depth=10)
    it = GroupIterator(qids, train, table, global_batch_size=4, num_negatives=3, seed=0)
    for g in rows(take(it, 20)):
        pos = {d for d, r in qrels[g.query_id].items() if r > 0}
        assert len(set(g.negative_ids)) == 3 and not pos & set(g.negative_ids)
    bad = GroupIterator(qids, train, table, global_batch_size=4, num_negatives=2, seed=0)
    with pytest.raises(ValueError, match="gave 3 negatives"):
        next(bad)


def test_set_table_changes_subsequent_draws_only():
    qrels = make_qrels()
    a, b = make_iter(seed=2), make_iter(seed=2)
    first_a, first_b = take(a, 2), take(b, 2)
    b.set_table(FakeTable(qrels, 2, version=1, offset=7))
    later_a, later_b = take(a, 2), take(b, 2)
    assert rows(first_a) == rows(first_b)
    assert [(g.query_id, g.positive_id) for g in rows(later_a)] == [(g.query_id, g.positive_id) for g in rows(later_b)]
    assert [g.negative_ids for g in rows(later_a)] != [g.negative_ids for g in rows(later_b)]
    assert b.state()["table_version"] == 1
    with pytest.raises(ValueError, match="table_version=1, this iterator has 0"):
        make_iter(seed=2).restore(b.state())


def test_bad_settings_are_one_line_errors():
    qrels = make_qrels()
    with pytest.raises(ValueError, match="not divisible by the process count 3"):
        make_iter(batch=4, process_count=3)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        make_iter(batch=64)
    with pytest.raises(ValueError, match="needs a negatives table"):
        GroupIterator(sorted(qrels), qrels, None, global_batch_size=4, num_negatives=2, seed=0)


# ---------------------------------------------------------------------------------------------- batching


@pytest.fixture(scope="module")
def texts():
    tok = build_wordpiece_tokenizer(tiny_vocab(), 64)
    rng = np.random.default_rng(0)
    words = "the cell gene protein cancer risk study blood brain virus".split()
    qrels = make_qrels()
    qtexts = [" ".join(rng.choice(words, size=rng.integers(1, 6))) for _ in qrels]
    dtexts = [" ".join(rng.choice(words, size=rng.integers(1, 40))) for _ in DOCS]
    queries = PretokenizedTexts.from_texts(tok, sorted(qrels), qtexts, 8, chunk=7)
    passages = PretokenizedTexts.from_texts(tok, DOCS, dtexts, 24, chunk=7)
    return tok, queries, passages, qtexts, dtexts


def test_pretokenized_matches_tokenizer(texts):
    tok, queries, passages, qtexts, dtexts = texts
    assert len(passages) == NUM_DOCS and passages.tokens.dtype == np.int32
    for i in (0, 17, NUM_DOCS - 1):
        stored = passages.tokens[passages.offsets[i]:passages.offsets[i + 1]]
        assert stored.tolist() == token_ids(tok, [dtexts[i]], 24)[0]
    assert passages.lengths.max() == 24  # some passages were truncated
    with pytest.raises(ValueError, match="doc id 'nope' was not pre-tokenised"):
        passages.rows(["d1", "nope"], "doc")


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_batch_layout_padding_and_masks(texts, devices):
    tok, queries, passages, _, _ = texts
    it = make_iter(seed=0, batch=8, n=3)
    batch = next(it)
    out = BatchBuilder(queries, passages, local_device_count=devices)(batch)
    per, g = 8 // devices, 4
    lq = bucket_length(int(queries.lengths[queries.rows([x.query_id for x in batch.global_groups])].max()), 8)
    assert out["query_ids"].shape == out["query_mask"].shape == (devices, per, lq)
    assert out["passage_ids"].shape[:2] == (devices, per * g) and out["passage_ids"].shape[2] in (16, 24)
    assert all(v.dtype == np.int32 for v in out.values())
    flat_p = out["passage_ids"].reshape(8 * g, -1)
    flat_m = out["passage_mask"].reshape(8 * g, -1)
    for i, grp in enumerate(batch.groups):
        d, j = divmod(i, per)
        qrow = queries.index[grp.query_id]
        q = queries.tokens[queries.offsets[qrow]:queries.offsets[qrow + 1]]
        assert out["query_ids"][d, j, :len(q)].tolist() == q.tolist()
        assert out["query_mask"][d, j].sum() == len(q) and (out["query_ids"][d, j, len(q):] == 0).all()
        for k, doc in enumerate((grp.positive_id, *grp.negative_ids)):
            row = passages.index[doc]
            ref = passages.tokens[passages.offsets[row]:passages.offsets[row + 1]]
            assert out["passage_ids"][d, j * g + k, :len(ref)].tolist() == ref.tolist()  # row i*G is the positive
            assert flat_p[i * g + k, :len(ref)].tolist() == ref.tolist()
            assert flat_m[i * g + k].tolist() == [1] * len(ref) + [0] * (flat_m.shape[1] - len(ref))


def test_hosts_pad_to_the_same_global_bucket(texts):
    _, queries, passages = texts[:3]
    short = [f"d{i}" for i in range(NUM_DOCS) if passages.lengths[i] <= 10]
    long_ = [f"d{i}" for i in range(NUM_DOCS) if passages.lengths[i] > 16]
    groups = [Group("q0", short[0], ()), Group("q2", long_[0], ())]
    host0 = GroupBatch(groups[:1], groups, 0, 0)
    out = BatchBuilder(queries, passages, local_device_count=1)(host0)
    assert out["passage_ids"].shape == (1, 1, 24)  # from the other host's long passage
    assert out["passage_mask"][0, 0].sum() == passages.lengths[passages.index[short[0]]]


def test_batch_not_divisible_by_devices_is_one_line(texts):
    _, queries, passages = texts[:3]
    batch = next(make_iter(batch=6, n=1, process_index=0, process_count=2))
    msg = r"global batch size 6 is not divisible by process_count 2 x local devices 2 = 4"
    with pytest.raises(ValueError, match=msg):
        BatchBuilder(queries, passages, local_device_count=2)(batch)


def test_batches_are_deterministic(texts):
    _, queries, passages = texts[:3]
    build = BatchBuilder(queries, passages, local_device_count=2)
    a = [build(b) for b in take(make_iter(seed=9, n=2), 3)]
    b = [build(b) for b in take(make_iter(seed=9, n=2), 3)]
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
