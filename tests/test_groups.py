"""GroupIterator (jdr.data.groups) and the batch builder (jdr.data.batching): layout, padding, host rows, masks."""

import json
from collections import Counter

import numpy as np
import pytest

from jdr.data.batching import BatchBuilder, PretokenizedTexts, relevance_mask
from jdr.data.groups import Group, GroupIterator
from jdr.data.source import Example
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
        assert len({g.query_id for g in b.groups}) == 6
        assert len({g.positive_id for g in b.groups}) == 6
    epoch0 = [b for b in batches if b.epoch == 0]
    assert max(Counter((g.query_id, g.positive_id) for b in epoch0 for g in b.groups).values()) == 1
    plain = make_iter(batch=6, unique_in_batch=False)
    clashes = [
        b
        for b in take(plain, 3 * plain.steps_per_epoch())
        if len({g.query_id for g in b.groups}) < 6 or len({g.positive_id for g in b.groups}) < 6
    ]
    assert clashes  # the data does produce clashes, so the check above means something


def test_state_restore_mid_epoch_continues_identically():
    ref = make_iter(seed=5)
    take(ref, 3)
    state = ref.state()
    state = json.loads(json.dumps(state))  # it goes into a JSON checkpoint item
    expected = take(ref, 10)  # crosses into epoch 1
    resumed = make_iter(seed=5)
    resumed.restore(state)
    got = take(resumed, 10)
    assert [b.groups for b in got] == [b.groups for b in expected]
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
        stored = passages.tokens[passages.offsets[i] : passages.offsets[i + 1]]
        assert stored.tolist() == token_ids(tok, [dtexts[i]], 24)[0]
    assert passages.lengths.max() == 24  # some passages were truncated
    with pytest.raises(ValueError, match="doc id 'nope' was not pre-tokenised"):
        passages.rows(["d1", "nope"], "doc")


def examples(batch, queries, passages, qrels=None):
    """A GroupBatch as the Examples a LabeledSource yields (keys = ids; relevant = the query's positives)."""
    qrels = qrels or make_qrels()
    out = []
    for g in batch.groups:
        docs = (g.positive_id, *g.negative_ids)
        out.append(
            Example(
                queries.tokens_of(queries.index[g.query_id]),
                tuple(passages.tokens_of(passages.index[d]) for d in docs),
                g.query_id,
                docs,
                frozenset(d for d, r in qrels[g.query_id].items() if r > 0),
            )
        )
    return out


def builder(devices=1, **kw):
    return BatchBuilder(query_max_length=8, passage_max_length=24, pad_token_id=0, local_device_count=devices, **kw)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_batch_layout_padding_and_masks(texts, devices):
    tok, queries, passages, _, _ = texts
    it = make_iter(seed=0, batch=8, n=3)
    batch = next(it)
    out = builder(devices, pad_queries_to_max=False)(examples(batch, queries, passages))
    per, g = 8 // devices, 4
    lq = bucket_length(int(queries.lengths[queries.rows([x.query_id for x in batch.groups])].max()), 8)
    assert out["query_ids"].shape == out["query_mask"].shape == (devices, per, lq)
    assert out["passage_ids"].shape[:2] == (devices, per * g) and out["passage_ids"].shape[2] in (16, 24)
    assert all(v.dtype == np.int32 for k, v in out.items() if k != "false_negatives")
    assert out["false_negatives"].shape == (devices, per, 8 * g) and out["false_negatives"].dtype == bool
    flat_p = out["passage_ids"].reshape(8 * g, -1)
    flat_m = out["passage_mask"].reshape(8 * g, -1)
    for i, grp in enumerate(batch.groups):
        d, j = divmod(i, per)
        qrow = queries.index[grp.query_id]
        q = queries.tokens[queries.offsets[qrow] : queries.offsets[qrow + 1]]
        assert out["query_ids"][d, j, : len(q)].tolist() == q.tolist()
        assert out["query_mask"][d, j].sum() == len(q) and (out["query_ids"][d, j, len(q) :] == 0).all()
        for k, doc in enumerate((grp.positive_id, *grp.negative_ids)):
            row = passages.index[doc]
            ref = passages.tokens[passages.offsets[row] : passages.offsets[row + 1]]
            assert out["passage_ids"][d, j * g + k, : len(ref)].tolist() == ref.tolist()  # row i*G is the positive
            assert flat_p[i * g + k, : len(ref)].tolist() == ref.tolist()
            assert flat_m[i * g + k].tolist() == [1] * len(ref) + [0] * (flat_m.shape[1] - len(ref))
    fixed = builder(devices)(examples(batch, queries, passages))  # default: queries padded to the budget
    assert fixed["query_ids"].shape == (devices, per, 8)


@pytest.mark.parametrize("procs", [2, 4])
def test_host_rows_partition_the_global_batch(texts, procs):
    _, queries, passages = texts[:3]
    exs = examples(next(make_iter(seed=1, batch=8)), queries, passages)
    whole = builder(1)(exs)
    hosts = [builder(1, process_index=p, process_count=procs)(exs) for p in range(procs)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in hosts], axis=1), whole[key])


def test_hosts_pad_to_the_same_global_bucket(texts):
    _, queries, passages = texts[:3]
    short = [f"d{i}" for i in range(NUM_DOCS) if passages.lengths[i] <= 10]
    long_ = [f"d{i}" for i in range(NUM_DOCS) if passages.lengths[i] > 16]
    exs = [
        Example(queries.tokens_of(0), (passages.tokens_of(passages.index[short[0]]),), "q0", (short[0],), frozenset()),
        Example(queries.tokens_of(1), (passages.tokens_of(passages.index[long_[0]]),), "q2", (long_[0],), frozenset()),
    ]
    out = builder(1, process_index=0, process_count=2)(exs)
    assert out["passage_ids"].shape == (1, 1, 24)  # from the other host's long passage
    assert out["passage_mask"][0, 0].sum() == passages.lengths[passages.index[short[0]]]


def test_batch_not_divisible_by_devices_is_one_line(texts):
    _, queries, passages = texts[:3]
    exs = examples(next(make_iter(batch=6, n=1)), queries, passages)
    msg = r"global batch size 6 is not divisible by process_count 2 x local devices 2 = 4"
    with pytest.raises(ValueError, match=msg):
        builder(2, process_index=0, process_count=2)(exs)
    long_query = [exs[0]._replace(query=np.ones(9, np.int32))] + exs[1:]
    with pytest.raises(ValueError, match="query of 9 tokens exceeds the query budget of 8"):
        builder(1)(long_query)


def test_batches_are_deterministic(texts):
    _, queries, passages = texts[:3]
    build = builder(2)
    a = [build(examples(b, queries, passages)) for b in take(make_iter(seed=9, n=2), 3)]
    b = [build(examples(b, queries, passages)) for b in take(make_iter(seed=9, n=2), 3)]
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _ex(qkey, keys, relevant):
    tok = np.array([1, 2], np.int32)
    return Example(tok, tuple(tok for _ in keys), qkey, tuple(keys), frozenset(relevant))


def test_false_negative_mask_by_hand():
    """Three queries, G = 2. q0's other positive "b" appears as q1's hard negative, q2's positive "c" is also
    relevant to q0, and q1's own positive "x" repeats as q2's negative (relevant to q1 only)."""
    exs = [_ex("q0", ["a", "n0"], {"a", "b", "c"}), _ex("q1", ["x", "b"], {"x"}), _ex("q2", ["c", "x"], {"c"})]
    mask = relevance_mask(exs, 0, 3)
    expected = np.zeros((3, 6), bool)
    expected[0, [0, 3, 4]] = True  # own positive (kept by the loss), b (q1's negative), c (q2's positive)
    expected[1, [2, 5]] = True  # own positive, and x again as q2's negative
    expected[2, [4]] = True
    np.testing.assert_array_equal(mask, expected)
    out = BatchBuilder(
        query_max_length=4, passage_max_length=4, pad_token_id=0, local_device_count=1, process_index=1, process_count=3
    )(exs)
    np.testing.assert_array_equal(out["false_negatives"][0], expected[1:2])  # host 1 keeps row 1, all columns
    local = BatchBuilder(
        query_max_length=4, passage_max_length=4, pad_token_id=0, local_device_count=3, cross_device=False
    )(exs)
    assert local["false_negatives"].shape == (3, 1, 2)  # each device scores its own two passages
    np.testing.assert_array_equal(local["false_negatives"][:, 0], [[True, False], [True, False], [True, False]])
    off = BatchBuilder(
        query_max_length=4, passage_max_length=4, pad_token_id=0, local_device_count=1, false_negatives=False
    )(exs)
    assert "false_negatives" not in off


def test_ragged_subset_is_the_rows_tokens_in_order(texts):
    """`PretokenizedTexts.ragged(rows)`: what the ANCE refresh hands to `encode_token_ids` instead of re-tokenising."""
    _, _, passages = texts[:3]
    rows = [17, 0, 59, 17]
    tokens, offsets = passages.ragged(rows)
    assert offsets[0] == 0 and len(offsets) == len(rows) + 1 and offsets[-1] == len(tokens)
    assert [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(len(rows))] == [
        passages.tokens_of(r).tolist() for r in rows
    ]
    whole = passages.ragged(np.arange(len(passages)))
    assert whole[0] is passages.tokens and whole[1] is passages.offsets
