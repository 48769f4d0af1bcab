"""`jdr vq train / evaluate` end to end on a tiny model and a toy BEIR dir, plus its one-line errors."""

import argparse
import json

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdr.index.faiss_index import load_index
from jdr.index.store import load_embeddings, save_embeddings
from jdr.vq import cli
from jdr.vq.export import load_vq
from jdr.vq.layer import decode, encode, rotate

SMALL = [
    "vq.M=4",
    "vq.K=16",
    "vq.nlist=4",
    "vq.nprobe=2",
    "train.steps=6",
    "train.batch_size=8",
    "train.topk=8",
    "train.lr=1e-2",
    "vq.opq=False",
    "data.dev_queries=8",
    "data.query_max_length=16",
    "data.passage_max_length=32",
]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _vq(argv, overrides=(), capsys=None):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(argv)
    args.config_overrides = list(overrides)
    rc = cli.run(args)
    return rc, (json.loads(capsys.readouterr().out) if capsys is not None else None)


@pytest.fixture(scope="module")
def trained(tiny_model, toy_beir, tmp_path_factory):
    wd = tmp_path_factory.mktemp("vq_wd")
    over = SMALL + [f"data.dataset={toy_beir}", f"data.model={tiny_model}"]
    _vq(["train", "--workdir", str(wd), "--json"], over)
    return wd


def test_train_writes_workdir_and_dev_metrics(trained):
    for name in ("index.faiss", "index.faiss.ids.txt", "vq.safetensors", "run.json", "history.json", "metrics.json"):
        assert (trained / name).is_file(), name
    record = json.loads((trained / "run.json").read_text())
    assert record["config"]["vq"]["M"] == 4 and record["train_seconds"] > 0
    history = json.loads((trained / "history.json").read_text())
    assert len(history) == 6 and all(np.isfinite(h["loss"]) for h in history)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["train_queries"] == 32 - 8 and metrics["pseudo_queries"] == 0
    assert set(metrics["dev"]) == {"faiss_init", "distill_vq", "flat"}
    assert metrics["dev"]["flat"]["dense_r@10"] == pytest.approx(1.0)


def test_evaluate_json_and_exported_index_equals_jdr_adc(trained, capsys):
    rc, out = _vq(["evaluate", "--workdir", str(trained), "--json", "--flat", "--nprobe", "4"], capsys=capsys)
    assert rc == 0
    assert {"ndcg@10", "mrr@10", "recall@100", "dense_r@10", "dense_r@100", "flat", "nprobe"} <= set(out)
    assert out["split"] == "test" and out["queries"] == 8 and out["nprobe"] == 4
    assert 0.0 <= out["ndcg@10"] <= 1.0 and out["flat"]["dense_r@10"] == pytest.approx(1.0)
    # The written faiss index scores exactly like jdr's ADC (rotated query . decoded codes), probing all lists.
    vq = load_vq(trained / "vq.safetensors")
    docs, _ = load_embeddings(trained / "teacher_corpus", mmap=False)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((10, docs.shape[1])).astype(np.float32)
    index = load_index(trained / "index.faiss")
    faiss.extract_index_ivf(index).nprobe = vq.spec.nlist
    scores, rows = index.search(queries, 10)
    rec = decode(vq.params, encode(vq.params, rotate(jnp.asarray(docs), vq.rotation), vq.lists), vq.lists)
    full = np.asarray(rotate(jnp.asarray(queries), vq.rotation) @ rec.T)
    np.testing.assert_allclose(np.take_along_axis(full, rows, 1), scores, atol=1e-4)  # same score per id
    # Same top-10 scores; ids may differ only among exact ties (the toy corpus repeats words, so codes repeat).
    np.testing.assert_allclose(-np.sort(-full, axis=1)[:, :10], scores, atol=1e-4)


def test_cached_embeddings_and_doc_pseudo_queries(toy_beir, tmp_path, capsys):
    from jdr.data.beir import load_corpus, load_queries

    rng = np.random.default_rng(1)
    doc_ids = load_corpus(toy_beir / "corpus.jsonl").ids
    qids = list(load_queries(toy_beir / "queries.jsonl"))
    save_embeddings(tmp_path / "emb" / "corpus", rng.standard_normal((len(doc_ids), 16)).astype(np.float32), doc_ids)
    save_embeddings(tmp_path / "emb" / "queries", rng.standard_normal((len(qids), 16)).astype(np.float32), qids)
    over = SMALL + [
        f"data.dataset={toy_beir}",
        f"data.embeddings={tmp_path / 'emb'}",
        "data.pseudo_queries=doc",
        "vq.nlist=0",
        "data.model=/nonexistent",
    ]  # the model is never loaded
    rc, first = _vq(["train", "--workdir", str(tmp_path / "wd"), "--json"], over, capsys)
    assert rc == 0 and first["pseudo_queries"] == len(doc_ids) and first["train_queries"] == 24
    assert not (tmp_path / "wd" / "teacher_corpus").exists()
    rc, out = _vq(["evaluate", "--workdir", str(tmp_path / "wd"), "--json"], capsys=capsys)
    assert rc == 0 and out["nprobe"] is None and 0.0 < out["dense_r@100"] <= 1.0
    # vq.init_index: a run starting from the trained index (0 steps) reads back the very codebooks it exported.
    over2 = over + [f"vq.init_index={tmp_path / 'wd' / 'index.faiss'}", "train.steps=0"]
    rc, out2 = _vq(["train", "--workdir", str(tmp_path / "wd2"), "--json"], over2, capsys)
    assert out2["dev"]["faiss_init"] == pytest.approx(first["dev"]["distill_vq"])
    np.testing.assert_array_equal(
        load_vq(tmp_path / "wd2" / "vq.safetensors").params["codebooks"],
        load_vq(tmp_path / "wd" / "vq.safetensors").params["codebooks"],
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["vq.bogus=1"], "vq.bogus"),
        (["data.pseudo_queries=titles"], "data.pseudo_queries: 'titles' is not one of"),
        (["data.embeddings=/nonexistent/emb"], "/nonexistent/emb: data.embeddings: no such directory"),
        (["data.dataset=/nonexistent/beir"], "/nonexistent/beir"),
    ],
)
def test_train_errors_are_one_line(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match) as e:
        _vq(["train", "--workdir", str(tmp_path)], overrides)
    assert "\n" not in str(e.value)


def test_evaluate_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="run.json: no such file") as e:
        _vq(["evaluate", "--workdir", str(tmp_path)])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="overrides only apply"):
        _vq(["evaluate", "--workdir", str(tmp_path)], ["vq.M=8"])


def test_query_encoder_variant_exports_and_evaluates_with_its_tower(tiny_model, toy_beir, tmp_path, capsys):
    from jdr.models.hf import load

    wd = tmp_path / "qe"
    over = SMALL + [
        f"data.dataset={toy_beir}",
        f"data.model={tiny_model}",
        "train.query_encoder=true",
        "train.encoder_lr=1e-3",
    ]
    assert _vq(["train", "--workdir", str(wd), "--json"], over, capsys)[0] == 0
    params, _, _ = load(wd / "query_encoder")  # an HF / sentence-transformers dir of the trained query tower
    base, _, _ = load(tiny_model)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base)))
    rc, out = _vq(["evaluate", "--workdir", str(wd), "--json", "--flat"], capsys=capsys)
    assert rc == 0 and out["queries"] == 8 and 0.0 <= out["ndcg@10"] <= 1.0
    with pytest.raises(ValueError, match="pseudo-queries have no query text"):
        _vq(["train", "--workdir", str(tmp_path / "bad")], over + ["data.pseudo_queries=doc"])


def test_faiss_uses_every_core_unless_told():
    """`jdr vq` leaves faiss at its own default (all cores); --threads N pins it."""
    from jdr.cli import build_parser

    for sub in ("train", "evaluate"):
        args = build_parser().parse_args(["vq", sub, "--workdir", "w"])
        assert args.threads == 0
        assert build_parser().parse_args(["vq", sub, "--workdir", "w", "--threads", "1"]).threads == 1
    before = faiss.omp_get_max_threads()
    cli._set_threads(0)
    assert faiss.omp_get_max_threads() == before


def test_sigterm_exits_75_and_the_rerun_resumes_to_the_same_outputs(
    tiny_model, toy_beir, tmp_path, monkeypatch, capsys
):
    """`jdr vq train` with a query tower, SIGTERM during step 3: exit 75 with a checkpoint and nothing exported; the
    same command again resumes and writes what an uninterrupted run writes (index, VQ params, history, tower)."""
    import os
    import signal

    from jdr.models.hf import load
    from jdr.train.preemption import EXIT_RESTART
    from jdr.vq.resume import QueryOrder

    over = SMALL + [f"data.dataset={toy_beir}", f"data.model={tiny_model}", "train.query_encoder=true"]
    straight, wd = tmp_path / "straight", tmp_path / "preempted"
    assert _vq(["train", "--workdir", str(straight), "--json"], over, capsys)[0] == 0
    rows = QueryOrder.rows

    def rows_then_sigterm(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return rows(self, step)

    monkeypatch.setattr(QueryOrder, "rows", rows_then_sigterm)
    rc, out = _vq(["train", "--workdir", str(wd), "--json"], over, capsys)
    monkeypatch.undo()
    assert rc == EXIT_RESTART and out == {"step": 3, "stopped": True, "preempted": True}
    assert (wd / "checkpoints" / "3").is_dir() and not (wd / "index.faiss").exists()
    assert _vq(["train", "--workdir", str(wd), "--json"], over, capsys)[0] == 0
    for name in ("index.faiss", "vq.safetensors", "history.json", "index.faiss.ids.txt"):
        assert (wd / name).read_bytes() == (straight / name).read_bytes(), name
    for a, b in zip(
        jax.tree.leaves(load(wd / "query_encoder")[0]), jax.tree.leaves(load(straight / "query_encoder")[0])
    ):
        np.testing.assert_array_equal(a, b)
