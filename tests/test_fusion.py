"""Run fusion (RRF, normalised linear) against scores computed by hand; `jdr fuse` and `jdr search --bm25`."""

import math

import numpy as np
import pytest

from jdr.cli import main
from jdr.evaluate import bm25_run, read_trec_run, write_trec_run
from jdr.fusion import fuse, linear, normalize, rrf

A = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
B = {"q": {"d3": 0.9, "d1": 0.5, "d4": 0.1}}


def test_rrf_by_hand():
    got = rrf([A, B])["q"]
    want = {"d1": 1 / 61 + 1 / 62, "d2": 1 / 62, "d3": 1 / 63 + 1 / 61, "d4": 1 / 63}
    assert got == pytest.approx(want)
    assert list(got) == ["d1", "d3", "d2", "d4"]  # best first
    weighted = rrf([A, B], k=10, weights=[2, 1])["q"]
    assert weighted == pytest.approx({"d1": 2 / 11 + 1 / 12, "d2": 2 / 12, "d3": 2 / 13 + 1 / 11, "d4": 1 / 13})


def test_rrf_ranks_follow_trec_order_depth_and_top_k():
    tied = {"q": {"a": 1.0, "b": 1.0}}  # trec_eval order: ties by docid descending -> b rank 1, a rank 2
    assert rrf([tied, {"q": {"z": 1.0}}], k=0)["q"] == pytest.approx({"b": 1.0, "z": 1.0, "a": 0.5})
    assert rrf([A, B], depth=1)["q"] == pytest.approx({"d1": 1 / 61, "d3": 1 / 61})
    assert list(rrf([A, B], top_k=2)["q"]) == ["d1", "d3"]


def test_query_in_one_run_only():
    fused = rrf([A, {"other": {"x": 1.0}}])
    assert fused["other"] == pytest.approx({"x": 1 / 61})
    assert fused["q"] == pytest.approx({"d1": 1 / 61, "d2": 1 / 62, "d3": 1 / 63})
    assert linear([A, {"other": {"x": 1.0}}])["q"] == pytest.approx({"d1": 1.0, "d2": 0.5, "d3": 0.0})


def test_linear_minmax_by_hand():
    # A -> d1 1, d2 .5, d3 0; B -> d3 1, d1 .5, d4 0; a doc a run lacks takes that run's lowest value (0).
    assert linear([A, B])["q"] == pytest.approx({"d1": 1.5, "d2": 0.5, "d3": 1.0, "d4": 0.0})
    assert linear([A, B], weights=[0.3, 0.7])["q"] == pytest.approx({"d1": 0.65, "d2": 0.15, "d3": 0.7, "d4": 0.0})


def test_linear_zscore_by_hand():
    z = math.sqrt(1.5)  # scores (3, 2, 1): mean 2, population std sqrt(2/3) -> +-1/sqrt(2/3) = +-sqrt(1.5)
    got = linear([A, B], norm="zscore")["q"]
    assert got == pytest.approx({"d1": z + 0.0, "d2": 0.0 - z, "d3": -z + z, "d4": -z - z})
    assert normalize(np.array([5.0, 5.0]), "zscore").tolist() == [1.0, 1.0]  # constant list: the top
    assert normalize(np.array([5.0]), "minmax").tolist() == [1.0]


@pytest.mark.parametrize("single", [{"q": {"d1": 5.0}}, {"q": {"d1": 5.0, "d5": 5.0}}], ids=["one-doc", "ties"])
def test_linear_a_constant_list_counts_as_the_runs_best(single):
    """A run returning one document (or only tied scores) gives it the top of the range and the documents it did
    not return the bottom, so it still votes: min-max 1 / 0, z-score +1 / -1."""
    other = {"q": {"d2": 0.9, "d3": 0.1}}
    got = linear([single, other], weights=[2, 1])["q"]
    assert got == pytest.approx({**{d: 2.0 for d in single["q"]}, "d2": 1.0, "d3": 0.0})
    assert list(got)[-1] == "d3"
    got = linear([single, other], norm="zscore")["q"]  # other: d2 +1, d3 -1
    assert got == pytest.approx({**{d: 1.0 - 1.0 for d in single["q"]}, "d2": -1.0 + 1.0, "d3": -1.0 - 1.0})


def test_fusion_errors():
    with pytest.raises(ValueError, match="at least two runs"):
        rrf([A])
    with pytest.raises(ValueError, match="3 weights for 2 runs"):
        linear([A, B], weights=[1, 1, 1])
    with pytest.raises(ValueError, match="not all 0"):
        rrf([A, B], weights=[0, 0])
    with pytest.raises(ValueError, match="norm must be one of"):
        linear([A, B], norm="rank")
    with pytest.raises(ValueError, match="method must be one of"):
        fuse([A, B], "combmnz")


def test_jdr_fuse_cli(tmp_path, capsys):
    a, b, out = tmp_path / "a.trec", tmp_path / "b.trec", tmp_path / "fused.trec"
    write_trec_run(a, A)
    write_trec_run(b, B)
    assert main(["fuse", str(a), str(b), "--method", "linear", "--weights", "0.3,0.7", "--output", str(out)]) == 0
    assert read_trec_run(out)["q"] == pytest.approx({"d1": 0.65, "d2": 0.15, "d3": 0.7, "d4": 0.0})
    assert out.read_text().split("\n")[0] == "q Q0 d3 1 0.7000000000 linear"
    assert main(["fuse", str(a), str(b), "--output", str(out), "--k", "10", "--top-k", "2"]) == 0
    assert read_trec_run(out)["q"] == pytest.approx({"d1": 1 / 11 + 1 / 12, "d3": 1 / 13 + 1 / 11})
    capsys.readouterr()
    assert main(["fuse", str(a), str(b), "--weights", "1,x", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "jdr: error: fuse: --weights '1,x' must be comma-separated numbers"
    (tmp_path / "bad.trec").write_text("q Q0 d1 1 0.5\n")
    assert main(["fuse", str(a), str(tmp_path / "bad.trec"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jdr: error: {tmp_path / 'bad.trec'}:1: expected 6 columns") and "\n" not in err


def test_bm25_run_hand_corpus():
    from jdr.data.beir import Corpus

    ids = ["a", "b", "c"]
    corpus = Corpus(
        ids,
        ["", "", ""],
        ["cancer tumor growth", "virus infection spread", "tumor cells"],
        {d: i for i, d in enumerate(ids)},
    )
    run = bm25_run(corpus, {"q1": "tumor cancer", "q2": "unrelated words"}, k=10)
    assert list(run["q1"]) == ["a", "c"]  # a matches both terms, c one, b none (left out)
    assert run["q1"]["a"] > run["q1"]["c"] > 0
    assert run["q2"] == {}


def test_jdr_search_bm25(toy_beir, tmp_path, capsys):
    from jdr.data.beir import load_beir
    from jdr.evaluate import compute_metrics

    out = tmp_path / "bm25.trec"
    assert main(["search", "--bm25", "--data", str(toy_beir), "--split", "test", "--output", str(out)]) == 0
    test = load_beir(toy_beir, "test")
    run = read_trec_run(out)
    assert set(run) == set(test.qrels)  # the split's queries only
    want = bm25_run(test.corpus, test.queries)
    assert run.keys() == want.keys() and all(run[q] == pytest.approx(want[q], abs=1e-6) for q in want)
    assert compute_metrics(test.qrels, run)["recall@100"] > 0.5  # toy queries share words with their positive
    assert out.read_text().split()[5] == "bm25"
    all_q = tmp_path / "all.trec"
    assert (
        main(
            [
                "search",
                "--bm25",
                "--corpus",
                str(toy_beir / "corpus.jsonl"),
                "--queries",
                str(toy_beir / "queries.jsonl"),
                "--output",
                str(all_q),
            ]
        )
        == 0
    )
    assert len(read_trec_run(all_q)) == 40
    capsys.readouterr()
    assert main(["search", "--bm25", "--output", str(out)]) == 2
    assert "exactly one of --data" in capsys.readouterr().err
    assert main(["search", "--queries", "q.jsonl", "--output", str(out)]) == 2
    assert "give --model, --index and --queries" in capsys.readouterr().err
