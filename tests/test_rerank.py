"""`jdr rerank` and `jdr score`: the reranked order is the model's own scores sorted, scored JSONL round-trips
through the `jsonl` source as teacher scores, a stopped `jdr score` resumes, bad input is one line before any
model is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jdr.cli import main
from jdr.data.beir import load_beir
from jdr.data.tevatron import load_tevatron
from jdr.errors import DataError
from jdr.evaluate import ranked, read_trec_run, write_trec_run
from jdr.models.cross_encoder import score_texts
from jdr.models.cross_encoder_hf import export_cross_encoder, load_cross_encoder
from jdr.models.testing import write_tiny_model


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ce")
    enc = write_tiny_model(root / "enc", max_position_embeddings=64)
    params, spec, _ = load_cross_encoder(enc, seed=1)
    return export_cross_encoder(params, spec, enc, root / "ce")


@pytest.fixture(scope="module")
def groups(toy_beir, tmp_path_factory):
    """Tevatron JSONL of the toy set's train queries: 1 positive + 3 BM25 negatives each (`jdr mine`)."""
    out = tmp_path_factory.mktemp("groups") / "groups.jsonl"
    assert main(["mine", "--data", str(toy_beir), "--source", "bm25", "--num", "3", "--output", str(out)]) == 0
    return out


def _no_model(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""
    import jdr.models.cross_encoder_hf as hf

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(hf, "load_cross_encoder", refuse)


def test_rerank_order_equals_sorting_by_the_models_own_scores(ce_dir, toy_beir, tmp_path):
    data = load_beir(toy_beir, "test")
    run = {q: {d: float(-i) for i, d in enumerate(data.corpus.ids[:12])} for q in data.queries}
    write_trec_run(tmp_path / "in.trec", run)
    out = tmp_path / "out.trec"
    assert (
        main(
            [
                "rerank",
                "--model",
                str(ce_dir),
                "--run",
                str(tmp_path / "in.trec"),
                "--data",
                str(toy_beir),
                "--depth",
                "5",
                "--output",
                str(out),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    got = read_trec_run(out)
    params, spec, tok = load_cross_encoder(ce_dir)
    for qid in list(data.queries)[:4]:
        top = [d for d, _ in ranked(run[qid])[:5]]
        logits = score_texts(
            params,
            spec,
            tok,
            [data.queries[qid]] * 5,
            [data.corpus.passage(data.corpus.index[d]) for d in top],
            progress=False,
        )
        assert [d for d, _ in ranked(got[qid])] == [top[i] for i in np.argsort(-logits, kind="stable")]
        np.testing.assert_allclose(sorted(got[qid].values()), sorted(logits), atol=1e-5)


def test_rerank_run_naming_an_unknown_doc_is_one_line_before_the_model(toy_beir, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.trec").write_text("q0 Q0 d0_0 1 2.0 x\nq0 Q0 nosuchdoc 2 1.0 x\n")
    _no_model(monkeypatch)
    code = main(
        [
            "rerank",
            "--model",
            "unused",
            "--run",
            str(tmp_path / "bad.trec"),
            "--data",
            str(toy_beir),
            "--output",
            str(tmp_path / "o.trec"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bad.trec:2" in err and "nosuchdoc" in err and not (tmp_path / "o.trec").exists()


def test_score_round_trips_through_the_jsonl_source_and_resumes(ce_dir, groups, tmp_path):
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(ce_dir), "--input", str(groups), "--output", str(out), "--chunk", "7"]) == 0
    assert not (tmp_path / "scored.jsonl.parts").exists()
    data = load_tevatron(out, scores=True)
    params, spec, tok = load_cross_encoder(ce_dir)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(groups.read_text().splitlines())
    for rec in records[:3]:
        passages = rec["positive_passages"] + rec["negative_passages"]
        assert all("retriever_score" in p for p in rec["negative_passages"])  # jdr mine's BM25 score kept
        want = score_texts(
            params,
            spec,
            tok,
            [rec["query"]] * len(passages),
            [(p["title"] + " " + p["text"]).strip() for p in passages],
            progress=False,
        )
        got = data.teacher.of(rec["query_id"], [p["docid"] for p in passages])
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Resume: a finished chunk left from a stopped run is kept as it is, the rest is scored.
    again = tmp_path / "again.jsonl"
    parts = tmp_path / "again.jsonl.parts"
    parts.mkdir()
    (parts / "meta.json").write_text(json.dumps({"input": str(groups), "records": len(records), "chunk": 7}))
    first = [dict(r, resumed_marker=True) for r in records[:7]]
    (parts / "000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    assert (
        main(
            ["score", "--model", str(ce_dir), "--input", str(groups), "--output", str(again), "--chunk", "7", "--json"]
        )
        == 0
    )
    lines = [json.loads(x) for x in again.read_text().splitlines()]
    assert [r.get("resumed_marker", False) for r in lines] == [True] * 7 + [False] * (len(records) - 7)
    assert lines[7:] == records[7:]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["positive_passages"][0].pop("score"), "has no teacher 'score'"),
        (lambda r: r["negative_passages"][1].update(score="high"), "negative_passages[1].score 'high' is not a finite"),
    ],
)
def test_missing_or_non_numeric_teacher_score_is_one_line_naming_the_line(ce_dir, groups, tmp_path, edit, message):
    scored = tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(ce_dir), "--input", str(groups), "--output", str(scored)]) == 0
    records = [json.loads(x) for x in scored.read_text().splitlines()]
    edit(records[4])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError) as e:
        data = load_tevatron(bad, scores=True)
        data.teacher.check(sorted(data.qrels), data.qrels, data.negatives, data.corpus.ids, 3)
    assert "bad.jsonl:5" in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_score_bad_input_is_one_line_before_the_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "g.jsonl").write_text(
        json.dumps({"query": "a", "positive_passages": [{"docid": "1", "text": "x"}]})
        + "\n"
        + json.dumps({"query": 3})
        + "\n"
    )
    _no_model(monkeypatch)
    code = main(
        ["score", "--model", "unused", "--input", str(tmp_path / "g.jsonl"), "--output", str(tmp_path / "o.jsonl")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "g.jsonl:2" in err and not (tmp_path / "o.jsonl").exists()
