"""`jdr mine` (jdr/negatives/mine.py + the CLI): ranking window, filters counted by hand, determinism, the BM25
tie order it relies on, and the equivalence with the BM25 table of `jdr train` (same groups, same token arrays)."""

import json

import numpy as np
import pytest

from jdr.cli import main
from jdr.config import load_config
from jdr.data.beir import Corpus, load_beir
from jdr.index.bm25 import bm25_candidates
from jdr.negatives.mine import MineSettings, mine_negatives, parse_range
from jdr.train.trainer import prepare

# q0 [1, 0] positive d0 (0.8); q1 [-1, 0] positive d5; q2 [1, 0] positives d1 (0.9) and d3 (0.5)
P = np.array([[0.8, 0], [0.9, 0], [0.75, 0], [0.5, 0], [0.3, 0], [0.1, 0]], np.float32)
Q = {"q0": [1.0, 0.0], "q1": [-1.0, 0.0], "q2": [1.0, 0.0]}
QRELS = {"q0": {"d0": 1}, "q1": {"d5": 1, "d2": 0}, "q2": {"d1": 1, "d3": 2}, "q3": {"d4": 0}}


class FakeScorer:
    """Hand-made embeddings; records which passage rows were asked for."""

    def __init__(self):
        self.asked = []

    def queries(self, texts):
        return np.array([Q[t.split()[-1]] for t in texts], np.float32)

    def passages(self, rows):
        self.asked.append(np.asarray(rows).tolist())
        return P[np.asarray(rows)]


def hand_corpus():
    ids = [f"d{i}" for i in range(6)]
    texts = [f"alpha word{i} " + "filler " * i for i in range(6)]  # every doc shares "alpha" with every query
    return Corpus(ids, [""] * 6, texts, {d: i for i, d in enumerate(ids)})


QUERIES = {q: f"alpha {q}" for q in ("q0", "q1", "q2", "q3")}  # the last word is the fake scorer's key


def _mine(source="ann", **kw):
    kw.setdefault("depth", 5)
    scorer = FakeScorer()
    mined = mine_negatives(
        hand_corpus(), QUERIES, QRELS, MineSettings({source: kw.pop("num", 0)}, **kw), scorer=scorer, progress=False
    )
    return mined, scorer


def _negs(mined):
    return {q: [(f"d{r}", rank) for r, rank, _, _ in negs] for q, negs in zip(mined.qids, mined.negatives)}


def test_ann_ranking_window_and_filters_by_hand():
    mined, _ = _mine()
    assert mined.qids == ["q0", "q1", "q2"] and mined.stats["skipped_queries"] == 1  # q3: no positive
    assert _negs(mined)["q0"] == [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4), ("d5", 5)]  # positive d0 removed
    assert _negs(mined)["q1"] == [("d4", 1), ("d3", 2), ("d2", 3), ("d0", 4), ("d1", 5)]  # rel-0 d2 is a negative
    assert _negs(mined)["q2"] == [("d0", 1), ("d2", 2), ("d4", 3), ("d5", 4)]
    assert mined.stats["positives_removed"] == 4
    scores = {f"d{r}": s for r, _, s, src in mined.negatives[0]}
    assert scores == pytest.approx({"d1": 0.9, "d2": 0.75, "d3": 0.5, "d4": 0.3, "d5": 0.1})
    # margin 0.1 below the weakest positive: q0 drops d1, d2 (>= 0.7); q2 (weakest 0.5) drops d0, d2 (>= 0.4)
    mined, _ = _mine(denoise_threshold=0.1)
    assert mined.stats["filtered"] == {"denoise_threshold": 4, "max_score_ratio": 0}
    assert _negs(mined)["q0"] == [("d3", 3), ("d4", 4), ("d5", 5)] and _negs(mined)["q2"] == [("d4", 3), ("d5", 4)]
    # ratio 0.5: q0 drops > 0.4 (d1, d2, d3), q2 drops > 0.25 (d0, d2, d4); q1's scores are all below -0.05? no:
    # q1's weakest positive scores -0.1, the limit is -0.05, every candidate (<= -0.3) stays
    mined, _ = _mine(max_score_ratio=0.5)
    assert mined.stats["filtered"] == {"denoise_threshold": 0, "max_score_ratio": 6}
    assert _negs(mined)["q1"] == [("d4", 1), ("d3", 2), ("d2", 3), ("d0", 4), ("d1", 5)]
    # window 1-4 = ranks 2..4, then the margin rule inside it
    mined, _ = _mine(sample_range=(1, 4), denoise_threshold=0.1)
    assert _negs(mined)["q0"] == [("d3", 3), ("d4", 4)] and mined.stats["filtered"]["denoise_threshold"] == 2


def test_bm25_filter_embeds_only_what_it_scores():
    mined, scorer = _mine("bm25", denoise_threshold=0.1)
    assert scorer.asked == [[0, 1, 2, 3, 4, 5]]  # one call, the window's rows and the positives, sorted
    assert mined.stats["filtered"]["denoise_threshold"] == 4  # the same dense rule as with ANN: all docs are in range
    for q, negs in zip(mined.qids, mined.negatives):
        assert all(src == "bm25" and score > 0 for _, _, score, src in negs)
    plain, scorer = _mine("bm25")
    assert scorer.asked == [] and plain.stats["filtered"]["denoise_threshold"] == 0  # no model needed


def test_sampling_is_seeded_in_rank_order_and_num_zero_keeps_all():
    a, _ = _mine(num=2, seed=3)
    b, _ = _mine(num=2, seed=3)
    assert a.negatives == b.negatives and all(len(n) == 2 for n in a.negatives)
    for negs in a.negatives:
        assert [r for _, r, _, _ in negs] == sorted(r for _, r, _, _ in negs)
    draws = {tuple(map(tuple, _mine(num=2, seed=s)[0].negatives)) for s in range(8)}
    assert len(draws) > 1  # the seed matters
    full, _ = _mine(num=0)
    assert [len(n) for n in full.negatives] == [5, 5, 4]
    summary = _mine(num=5)[0].summary()
    assert summary["negatives_per_query"] == {"min": 4, "mean": pytest.approx(14 / 3), "max": 5}
    assert summary["short_queries"] == 1


def test_hybrid_draws_each_source_in_order_without_repeats():
    scorer = FakeScorer()
    mined = mine_negatives(
        hand_corpus(),
        QUERIES,
        QRELS,
        MineSettings({"bm25": 2, "ann": 2}, depth=5, seed=1),
        scorer=scorer,
        progress=False,
    )
    assert scorer.asked == [[0, 1, 2, 3, 4, 5]]  # ANN embeds the whole corpus once; no second call for BM25
    for negs in mined.negatives:
        docs = [r for r, _, _, _ in negs]
        assert len(docs) == len(set(docs))  # a doc BM25 drew is not drawn again by ANN
        assert [src for _, _, _, src in negs] == ["bm25"] * 2 + ["ann"] * (len(negs) - 2)
    # both sources rank the same docs: ANN meets BM25's picks again and takes the rest (q2 has exactly 4)
    assert mined.stats["repeated_across_sources"] > 0 and [len(n) for n in mined.negatives] == [4, 4, 4]


def test_settings_errors():
    with pytest.raises(ValueError, match="0 <= start < end <= --depth 200"):
        MineSettings({"bm25": 1}, sample_range=(10, 300))
    with pytest.raises(ValueError, match="sources must be among"):
        MineSettings({"gold": 1})
    with pytest.raises(ValueError, match="START-END"):
        parse_range("10:20")
    assert parse_range("10-100") == (10, 100)
    with pytest.raises(ValueError, match="need --model"):
        mine_negatives(hand_corpus(), QUERIES, QRELS, MineSettings({"ann": 1}))


def test_bm25_top_k_is_a_prefix_of_deeper_rankings():
    """Equal scores come in row order, so the table (k = depth + max positives of the TRAINING queries) and
    `jdr mine` (k over all queries) see the same ranking prefix. Duplicated docs force ties."""
    docs = ["cancer risk study"] * 7 + ["cancer gene"] * 5 + ["virus cancer cell"] * 6 + ["brain"] * 3
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in rng.permutation(len(docs))]
    queries = ["cancer", "cancer risk", "virus cell", "brain study"]
    full_s, full_r = bm25_candidates(docs, queries, len(docs))
    for k in (3, 5, 8, 13):
        s, r = bm25_candidates(docs, queries, k)
        np.testing.assert_array_equal(r, full_r[:, :k])
    for s, r in zip(full_s, full_r):
        valid = r >= 0
        keys = list(zip(-s[valid], r[valid]))
        assert keys == sorted(keys)  # score descending, then row ascending


# -- CLI and the equivalence with the BM25 table -----------------------------------------------------------------
def test_cli_errors_are_one_line(toy_beir, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    for argv, fragment in [
        (["--source", "ann"], "need --model"),
        (["--sample-range", "5-300"], "--sample-range 5-300 must satisfy"),
        (["--source", "hybrid", "--hybrid", "bm25:1,xyz:2"], "mine: --hybrid: bad entry 'xyz:2'"),
        (["--source", "hybrid", "--hybrid", "bm25:1,ann:1", "--num", "3", "--model", "minilm"], "differs from"),
    ]:
        assert main(["mine", "--data", str(toy_beir), "--output", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert fragment in err and "\n" not in err and err.startswith("jdr: error: ")
    assert not out.exists()


def _mine_cli(toy_beir, out, *args):
    assert main(["mine", "--data", str(toy_beir), "--output", str(out), "--json", *args]) == 0


def test_cli_writes_tevatron_deterministically(toy_beir, tmp_path, capsys):
    _mine_cli(toy_beir, tmp_path / "a.jsonl", "--depth", "10", "--sample-range", "1-8", "--num", "3")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _mine_cli(toy_beir, tmp_path / "b.jsonl", "--depth", "10", "--sample-range", "1-8", "--num", "3")
    _mine_cli(toy_beir, tmp_path / "c.jsonl", "--depth", "10", "--sample-range", "1-8", "--num", "3", "--seed", "1")
    a = (tmp_path / "a.jsonl").read_text()
    assert a == (tmp_path / "b.jsonl").read_text() and a != (tmp_path / "c.jsonl").read_text()
    records = [json.loads(x) for x in a.splitlines()]
    assert summary["queries"] == len(records) == 32 and summary["sources"] == {"bm25": 3}
    data = load_beir(toy_beir, "train")
    for r in records:
        assert [p["docid"] for p in r["positive_passages"]] == list(data.qrels[r["query_id"]])
        ranks = [n["rank"] for n in r["negative_passages"]]
        assert ranks == sorted(ranks) and all(2 <= x <= 8 for x in ranks) and len(ranks) <= 3
        assert all(n["source"] == "bm25" and n["score"] > 0 for n in r["negative_passages"])
    assert summary["negatives"] == sum(len(r["negative_passages"]) for r in records)


def test_mined_file_trains_on_exactly_the_bm25_table_groups(tiny_model, toy_beir, tmp_path, capsys):
    """`jdr mine --source bm25 --depth D --sample-range 0-D --num 0`, then `data.source=jsonl` with
    `negatives.source=file`, draws the same groups as `negatives.source=bm25` on the BEIR dir: same dev split,
    same ranked lists, same sampled negatives -> identical token arrays, batch after batch."""
    out = tmp_path / "mined.jsonl"
    _mine_cli(toy_beir, out, "--depth", "3", "--sample-range", "0-3", "--num", "0")
    common = [
        f"model.path={tiny_model}",
        f"data.dataset={toy_beir}",
        "negatives.depth=3",
        "negatives.num=1",
        "train.global_batch_size=8",
    ]
    beir = prepare(load_config("configs/tiny.py", [*common, "negatives.source=bm25"]), tmp_path / "a")
    mined = prepare(
        load_config(
            "configs/tiny.py", [*common, "negatives.source=file", "data.source=jsonl", f"data.jsonl.path={out}"]
        ),
        tmp_path / "b",
    )
    assert sorted(beir.training.dev.qrels) == sorted(mined.training.dev.qrels)
    table_a, table_b = beir.source.table, mined.source.table
    for q in beir.source.train_qids:
        assert table_a.ranked(q, "bm25")[:3] == table_b.ranked(q, "file")
    for _ in range(12):  # four epochs of 3 batches
        xa, xb = beir.batches(beir.source.next_batch()), mined.batches(mined.source.next_batch())
        assert xa.keys() == xb.keys()
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


def test_scifact_jsonl_config_is_the_bm25_config_on_the_mined_file():
    from jdr.config import to_dict

    a, b = to_dict(load_config("configs/scifact_bm25.py")), to_dict(load_config("configs/scifact_bm25_jsonl.py"))
    assert b["data"].pop("source") == "jsonl" and a["data"].pop("source") == "beir"
    assert b["data"].pop("jsonl")["path"] and a["data"].pop("jsonl")["path"] == ""
    assert b["negatives"].pop("source") == "file" and a["negatives"].pop("source") == "bm25"
    assert a == b and b["negatives"]["depth"] == 200 and b["negatives"]["num"] == 1
