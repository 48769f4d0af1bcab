"""jdr's BM25 (jdr.index.bm25): the "lucene" preset (Pyserini's BEIR BM25, the default) stems and keeps
one-character tokens, "bm25s" is exactly the former set-up, and `jdr search --bm25`, `jdr mine`, `bm25`
negatives (`negatives.bm25_preset`) pass the preset through."""

import bm25s
import numpy as np
import pytest

from jdr.cli import main
from jdr.data.beir import Corpus
from jdr.evaluate import bm25_run, read_trec_run
from jdr.index import bm25 as bm25_module
from jdr.index.bm25 import bm25_candidates

PASSAGES = ["runners running fast", "the cat sat on a mat", "vitamin d levels in blood"]


def test_lucene_preset_stems_and_keeps_one_character_tokens():
    _, rows = bm25_candidates(PASSAGES, ["run", "d"], k=3)
    assert rows[:, 0].tolist() == [0, 2] and (rows[:, 1:] == -1).all()
    _, old = bm25_candidates(PASSAGES, ["run", "d"], k=3, preset="bm25s")
    assert (old == -1).all()  # no stemming, tokens of 2+ characters: neither query matches anything


def test_bm25s_preset_is_the_former_setup_and_k1_b_override():
    queries = ["running cat", "blood levels of vitamin"]
    scores, rows = bm25_candidates(PASSAGES, queries, k=3, preset="bm25s")
    former = bm25s.BM25(k1=1.5, b=0.75)
    former.index(bm25s.tokenize(PASSAGES, stopwords="en", show_progress=False), show_progress=False)
    want_rows, want = former.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False), k=3, show_progress=False
    )
    for q in range(2):
        got = {int(r): s for r, s in zip(rows[q], scores[q]) if r >= 0}
        assert got == pytest.approx({int(r): s for r, s in zip(want_rows[q], want[q]) if s > 0})
    lucene, _ = bm25_candidates(PASSAGES, queries, k=3)
    tuned, _ = bm25_candidates(PASSAGES, queries, k=3, k1=1.5, b=0.75)
    assert not np.allclose(lucene[1, 0], tuned[1, 0])  # k1 / b override the preset's 0.9 / 0.4
    with pytest.raises(ValueError, match="bm25 preset must be one of lucene, bm25s, got 'okapi'"):
        bm25_candidates(PASSAGES, queries, k=3, preset="okapi")


@pytest.fixture()
def stem_beir(tmp_path):
    """A BEIR dir where only a stemmed BM25 finds the test query's positive."""
    import json

    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(PASSAGES))
    )
    (d / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "run"}) + "\n" + json.dumps({"_id": "q2", "text": "cat"}) + "\n"
    )
    for split in ("train", "test"):
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t1\n")
    return d


def test_jdr_search_bm25_preset(stem_beir, tmp_path):
    former = bm25_run(
        Corpus(["d0", "d1", "d2"], ["", "", ""], PASSAGES, {"d0": 0, "d1": 1, "d2": 2}),
        {"q1": "run", "q2": "cat"},
        preset="bm25s",
    )
    runs = {}
    for preset in ("lucene", "bm25s", None):
        out = tmp_path / f"{preset}.trec"
        args = ["search", "--bm25", "--data", str(stem_beir), "--output", str(out)]
        assert main(args + (["--bm25-preset", preset] if preset else [])) == 0
        runs[preset] = read_trec_run(out)
    assert list(runs["lucene"]["q1"]) == ["d0"] and "q1" not in runs["bm25s"]
    assert runs[None] == runs["lucene"]  # the default
    assert runs["bm25s"]["q2"] == pytest.approx(former["q2"])


@pytest.fixture()
def spy(monkeypatch):
    """Record the preset of every `bm25_candidates` call (the callers import it from its module when used)."""
    presets = []
    real = bm25_module.bm25_candidates

    def recording(*args, preset="lucene", **kwargs):
        presets.append(preset)
        return real(*args, preset=preset, **kwargs)

    monkeypatch.setattr(bm25_module, "bm25_candidates", recording)
    return presets


def test_jdr_mine_bm25_preset(toy_beir, tmp_path, spy):
    assert main(["mine", "--data", str(toy_beir), "--output", str(tmp_path / "a.jsonl"), "--depth", "5"]) == 0
    assert (
        main(
            [
                "mine",
                "--data",
                str(toy_beir),
                "--output",
                str(tmp_path / "b.jsonl"),
                "--depth",
                "5",
                "--bm25-preset",
                "bm25s",
            ]
        )
        == 0
    )
    assert spy == ["lucene", "bm25s"]


def test_bm25_negatives_take_the_config_preset(tiny_model, toy_beir, tmp_path, spy):
    from jdr.config import load_config
    from jdr.train.trainer import prepare

    def cfg(*over):
        return load_config(
            "configs/tiny.py",
            [
                f"model.path={tiny_model}",
                f"data.dataset={toy_beir}",
                "train.global_batch_size=8",
                "negatives.source=bm25",
                *over,
            ],
        )

    assert cfg().negatives.bm25_preset == "lucene"
    prepare(cfg(), tmp_path / "a")
    prepare(cfg("negatives.bm25_preset=bm25s"), tmp_path / "b")
    assert spy == ["lucene", "bm25s"]
    with pytest.raises(ValueError, match="negatives.bm25_preset must be one of lucene, bm25s, got 'x'"):
        prepare(cfg("negatives.bm25_preset=x"), tmp_path / "c")


def test_no_third_party_debug_record_reaches_stderr(caplog, capsys):
    """A root handler as absl installs it (`logging.basicConfig()`, level NOTSET) shows any record a library lets
    through: a BM25 build must let through none below WARNING (bm25s sets its logger to DEBUG)."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:  # the loggers' own levels decide (root stays at its default WARNING), as in `jdr train`
        bm25_candidates(PASSAGES, ["run"], k=2)
    finally:
        logging.getLogger().removeHandler(handler)
    leaked = [
        f"{r.levelname}:{r.name}:{r.getMessage()}"
        for r in caplog.records
        if r.levelno < logging.WARNING and not r.name.startswith("jdr")
    ]
    assert leaked == []
    assert capsys.readouterr().err == ""
