"""TREC run files, metrics on hand-checkable toys, faiss search runs, and model retrieval end to end."""

import math

import numpy as np
import pytest

from jdr.errors import DataError
from jdr.evaluate import compute_metrics, read_trec_run, search_run, write_trec_run
from jdr.index import build_index

QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}}
RUN = {"q1": {"d1": 0.9, "d2": 0.5, "d3": 0.1}, "q2": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.1}}


def test_metrics_by_hand():
    m = compute_metrics(QRELS, RUN)
    assert set(m) == {"ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"}
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert m["map"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["recall@100"] == 1.0 and m["recall@1000"] == 1.0


def test_mrr_cut_at_10():
    docs = {f"d{i}": 100.0 - i for i in range(1, 12)}  # d11 is rank 11
    m = compute_metrics({"q": {"d11": 1}}, {"q": docs})
    assert m["mrr@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["recall@100"] == 1.0 and m["map"] == pytest.approx(1 / 11)
    docs["d11"] = 90.5  # now rank 10
    assert compute_metrics({"q": {"d11": 1}}, {"q": docs})["mrr@10"] == pytest.approx(1 / 10)


def test_missing_query_counts_zero_and_unjudged_queries_ignored():
    qrels = {**QRELS, "q3": {"d9": 1}, "q4": {"d1": 0}}  # q4 has no relevant doc: not counted
    m = compute_metrics(qrels, {**RUN, "extra": {"d1": 1.0}})
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["recall@100"] == pytest.approx(2 / 3)


def test_ties_and_identical_ids():
    # trec_eval breaks score ties by docid descending, so "b" ranks above "a".
    m = compute_metrics({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}})
    assert m["mrr@10"] == pytest.approx(0.5)
    run = {"q": {"q": 2.0, "a": 1.0}}
    assert compute_metrics({"q": {"a": 1}}, run)["mrr@10"] == pytest.approx(0.5)
    assert compute_metrics({"q": {"a": 1}}, run, ignore_identical_ids=True)["mrr@10"] == 1.0


def test_no_relevant_qrels_is_an_error():
    with pytest.raises(ValueError, match="no query with a relevant"):
        compute_metrics({"q": {"a": 0}}, RUN)


def test_trec_run_round_trip(tmp_path):
    path = tmp_path / "run.trec"
    write_trec_run(path, RUN, "mytag")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 0.900000 mytag"
    assert lines[3].split()[:4] == ["q2", "Q0", "d1", "1"] and lines[-1].split()[2:4] == ["d4", "4"]
    back = read_trec_run(path)
    assert back.keys() == RUN.keys()
    for q in RUN:
        assert back[q] == pytest.approx(RUN[q])
    assert compute_metrics(QRELS, back) == pytest.approx(compute_metrics(QRELS, RUN))


def test_trec_run_errors(tmp_path):
    p = tmp_path / "bad.trec"
    p.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n")
    with pytest.raises(DataError, match=r"bad.trec:2: expected 6 columns"):
        read_trec_run(p)
    p.write_text("q1 Q0 d1 1 high t\n")
    with pytest.raises(DataError, match=r"bad.trec:1: score 'high'"):
        read_trec_run(p)
    with pytest.raises(ValueError, match="one non-empty word"):
        write_trec_run(tmp_path / "x.trec", RUN, "two words")


def test_search_run():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((20, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[[3, 7]]  # unit vectors: each query's best inner product is its own doc
    doc_ids = [f"doc{i}" for i in range(20)]
    run = search_run(queries, ["a", "b"], build_index(docs), doc_ids, k=50)
    assert list(run) == ["a", "b"] and len(run["a"]) == 20  # k clamps to the corpus size
    assert max(run["a"], key=run["a"].get) == "doc3" and max(run["b"], key=run["b"].get) == "doc7"
    with pytest.raises(ValueError, match="2 query embeddings but 1 query ids"):
        search_run(queries, ["a"], build_index(docs), doc_ids, 5)


def test_retrieve_and_evaluate_model(tmp_path):
    from test_data import write_beir

    from jdr.data import load_beir
    from jdr.evaluate import evaluate_model, retrieve
    from jdr.models.hf import load
    from jdr.models.testing import write_tiny_model

    params, spec, tok = load(write_tiny_model(tmp_path / "model"))
    data = load_beir(write_beir(tmp_path / "ds"))
    run = retrieve(params, spec, tok, data.corpus, data.queries, k=2, batch_size=4)
    assert run.keys() == data.queries.keys() and all(len(docs) == 2 for docs in run.values())
    metrics = dict(evaluate_model(params, spec, tok, data, prefix="dev/", k=3, batch_size=4))
    assert set(metrics) == {"dev/ndcg@10", "dev/mrr@10", "dev/recall@100", "dev/recall@1000", "dev/map"}
    assert metrics["dev/recall@100"] == 1.0  # k=3 covers the whole 3-doc corpus
    assert 1 / 3 <= metrics["dev/mrr@10"] <= 1.0
