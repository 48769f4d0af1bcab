"""LTRe / ADORE: the retrieved list holds the positives, a compressed index scores by its reconstructions, the loss
falls on a toy index while the passage tower and the index stay fixed, host and callback search agree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdr.config import train_config
from jdr.index.faiss_index import build_index, save_index
from jdr.index.fixed import FixedIndex
from jdr.train.objectives.ltre import check_ltre_config, freeze_passage_tower, pmap_ltre_step
from jdr.train.optim import make_optimizer
from jdr.train.state import TrainState
from jdr.train.step import replicate, unreplicate

VOCAB, H, N_DOCS, LQ, LD = 80, 8, 48, 6, 10


def bag_encode(params, ids, mask, tower, deterministic, rng):
    """Untied embedding-bag towers with optional dropout: a fast stand-in for BERT in tests about the step."""
    x = params[tower]["emb"][ids] * mask[..., None]
    if not deterministic:
        x = x * jax.random.bernoulli(rng, 0.9, x.shape) / 0.9
    return x.sum(1) / mask.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def toy():
    """(params, index, query batch [Q, LQ], positive doc rows [Q]): docs encoded once by the passage tower."""
    r = np.random.default_rng(0)
    params = {t: {"emb": jnp.asarray(r.normal(size=(VOCAB, H)), jnp.float32)} for t in ("query", "passage")}
    doc_ids = r.integers(1, VOCAB, size=(N_DOCS, LD)).astype(np.int32)
    doc_emb = np.asarray(bag_encode(params, doc_ids, np.ones_like(doc_ids), "passage", True, None))
    index = FixedIndex.from_embeddings(doc_emb, [f"d{i}" for i in range(N_DOCS)])
    n_queries = 16
    queries = r.integers(1, VOCAB, size=(n_queries, LQ)).astype(np.int32)
    positives = r.choice(N_DOCS, size=n_queries, replace=False)
    return params, index, queries, positives


def _batch(toy, n_dev, slots=2):
    _, index, queries, positives = toy
    rows = index.positive_rows([[f"d{p}"] for p in positives], slots)
    batch = {"query_ids": queries, "query_mask": np.ones_like(queries), "positive_rows": rows}
    return {k: v.reshape(n_dev, -1, *v.shape[1:]) for k, v in batch.items()}


def test_candidates_hold_the_positives_in_rank_order():
    r = np.random.default_rng(1)
    emb = r.normal(size=(30, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # unit rows: each query's best match is its own row
    index = FixedIndex.from_embeddings(emb, [f"d{i}" for i in range(30)])
    q = emb[[3, 7]] * 5.0
    far = int(np.argmin(emb @ q[1]))
    pos = index.positive_rows([["d3"], [f"d{far}", "d7", f"d{far}"]], 3)  # duplicates collapse
    np.testing.assert_array_equal(pos, [[3, -1, -1], [far, 7, -1]])
    c = index.candidates(q, pos, 5)
    _, rows = index.index.search(q, 5)
    assert c["cand_emb"].shape == (2, 8, 4)
    np.testing.assert_array_equal(c["cand_emb"][:, :5], emb[rows])  # the top-k in the index's order
    np.testing.assert_array_equal(c["cand_relevant"][0], [1, 0, 0, 0, 0, 0, 0, 0])  # d3 retrieved first
    np.testing.assert_array_equal(c["cand_valid"][0], [1, 1, 1, 1, 1, 0, 0, 0])  # nothing to append
    np.testing.assert_array_equal(c["cand_relevant"][1], [1, 0, 0, 0, 0, 1, 0, 0])  # d7 first, far one appended
    np.testing.assert_array_equal(c["cand_valid"][1], [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(c["cand_emb"][1, 5], emb[far])
    assert not c["cand_emb"][1, 6:].any()
    with pytest.raises(ValueError, match="'dx' is not in the index"):
        index.positive_rows([["dx"]], 2)
    with pytest.raises(ValueError, match="more than ltre.max_positives=1"):
        index.positive_rows([["d1", "d2"]], 1)


@pytest.mark.parametrize("factory", ["PQ4x4", "OPQ4,IVF4,PQ4x4"])
def test_compressed_index_scores_are_its_reconstructions(tmp_path, factory, one_faiss_thread):
    """JPQ setting: a PQ index (with OPQ + IVF, the shape `jdr vq` exports) ranks by q . reconstruction, and those
    reconstructions are the vectors the loss scores."""
    r = np.random.default_rng(2)
    emb = r.normal(size=(400, 16)).astype(np.float32)
    path = tmp_path / "index.faiss"
    save_index(build_index(emb, factory), path)
    (tmp_path / "index.faiss.ids.txt").write_text("".join(f"d{i}\n" for i in range(400)))
    index = FixedIndex.load(path, nprobe=4 if "IVF" in factory else None)
    assert np.abs(index.vectors - emb).max() > 1e-3  # really compressed
    q = r.normal(size=(5, 16)).astype(np.float32)
    scores, rows = index.index.search(q, 20)
    np.testing.assert_allclose(np.einsum("bh,bkh->bk", q, index.vectors[rows]), scores, rtol=1e-4, atol=1e-4)
    c = index.candidates(q, np.full((5, 1), -1, np.int32), 20)
    np.testing.assert_array_equal(c["cand_emb"][:, :20], index.vectors[rows])


def _train(toy, n_dev, search, steps, loss_name="lambdarank", loss_kwargs=None, lr=0.05):
    params, index, _, _ = toy
    tx = freeze_passage_tower(optax.adamw(lr, weight_decay=0.1))
    step = pmap_ltre_step(
        bag_encode, index=index, top_k=10, search=search, loss_name=loss_name, loss_kwargs=loss_kwargs or {}, tx=tx
    )
    state = replicate(TrainState.create(params, tx), jax.local_devices()[:n_dev])
    batch, history = _batch(toy, n_dev), []
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.key(3))
        history.append({k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()})
    return unreplicate(state), history


@pytest.mark.parametrize("loss_name,loss_kwargs", [("lambdarank", {}), ("listwise", {"temperature": 0.5})])
def test_loss_falls_on_a_toy_index_with_passage_tower_and_index_fixed(toy, loss_name, loss_kwargs):
    params, index, queries, _ = toy
    vectors, probe = index.vectors.copy(), index.index.search(index.vectors[:5], 5)
    if len(jax.local_devices()) < 8:
        pytest.skip("needs the 8 fake CPU devices of conftest.py")
    state, history = _train(toy, 8, "callback", 25, loss_name, loss_kwargs, lr=0.3)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], [h["loss"] for h in history]
    assert history[0]["retrieved_mrr@10"] < 0.3 and history[-1]["retrieved_mrr@10"] > 0.8  # it learned to retrieve
    np.testing.assert_array_equal(state.params["passage"]["emb"], params["passage"]["emb"])  # frozen: bit-equal
    assert np.abs(state.params["query"]["emb"] - params["query"]["emb"]).max() > 1e-2
    np.testing.assert_array_equal(index.vectors, vectors)
    for got, want in zip(index.index.search(index.vectors[:5], 5), probe):
        np.testing.assert_array_equal(got, want)


def test_host_search_and_callback_search_give_the_same_update(toy):
    """Dropout on: the host-side embedder uses the step's own key, so both modes search the same embeddings."""
    a, ha = _train(toy, 8, "callback", 2)
    b, hb = _train(toy, 8, "host", 2)
    np.testing.assert_allclose(b.params["query"]["emb"], a.params["query"]["emb"], rtol=1e-5, atol=1e-6)
    for k in ("loss", "retrieved_mrr@10", "retrieved_recall@10", "grad_norm"):
        np.testing.assert_allclose(hb[-1][k], ha[-1][k], rtol=1e-5, err_msg=k)


def test_frozen_passage_tower_gets_no_update_even_with_weight_decay():
    tx, _ = make_optimizer(lr=0.1, total_steps=2, weight_decay=0.5, grad_accum_steps=2)
    tx = freeze_passage_tower(tx)
    params = {t: {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)} for t in ("query", "passage")}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for _ in range(2):  # MultiSteps: the 2nd micro-step applies the update
        updates, state = tx.update(grads, state, params)
    assert all(not np.any(u) for u in jax.tree.leaves(updates["passage"]))
    assert all(np.all(u != 0) for u in jax.tree.leaves(updates["query"]))
    with pytest.raises(ValueError, match="model.tied=False"):
        freeze_passage_tower(optax.sgd(0.1)).init({"shared": params["query"]})


def test_a_shared_dense_layer_is_frozen_with_the_passage_tower():
    """A whitened model (`model.path` with a Dense after pooling, shared by both towers) trains with LTRe: the
    Dense encoded the index as part of the passage tower, so it stays fixed; the query tower moves."""
    tx = freeze_passage_tower(optax.sgd(0.1))
    params = {t: {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)} for t in ("query", "passage", "dense")}
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert all(not np.any(u) for t in ("passage", "dense") for u in jax.tree.leaves(updates[t]))
    assert all(np.all(u != 0) for u in jax.tree.leaves(updates["query"]))
    with pytest.raises(ValueError, match="model.tied=False"):
        tx.init({"shared": params["query"], "dense": params["dense"]})


def _cfg(**ltre):
    cfg = train_config()
    with cfg.unlocked():
        cfg.model.tied = False
        cfg.negatives.source = "none"
        cfg.ltre.enabled = True
        for k, v in ltre.items():
            cfg.ltre[k] = v
    return cfg


@pytest.mark.parametrize(
    "change,message",
    [
        ({"top_k": 0}, "ltre.top_k must be >= 1"),
        ({"loss": "ranknet"}, "ltre.loss must be one of lambdarank, listwise"),
        ({"search": "thread"}, "ltre.search must be one of callback, host"),
        ({"index": "/nonexistent/index.faiss"}, "ltre.index: /nonexistent/index.faiss does not exist"),
    ],
)
def test_ltre_config_errors(change, message):
    check_ltre_config(_cfg())
    with pytest.raises(ValueError, match=message):
        check_ltre_config(_cfg(**change))
    cfg = _cfg()
    with cfg.unlocked():
        cfg.model.tied = True
    with pytest.raises(ValueError, match="needs model.tied=False"):
        check_ltre_config(cfg)
    cfg = _cfg()
    with cfg.unlocked():
        cfg.negatives.source = "bm25"
    with pytest.raises(ValueError, match="set negatives.num=0"):
        check_ltre_config(cfg)


def test_jdr_train_runs_ltre_with_the_passage_tower_fixed(tiny_model, toy_beir, tmp_path):
    """`jdr train` with `ltre.enabled`: the training source's queries and qrels feed the LTRe step (positives as index
    rows), the query tower moves, the passage tower (which encoded the index) ends bit-identical."""
    import json

    from jdr.config import load_config
    from jdr.models.hf import load
    from jdr.models.workdir import load_workdir
    from jdr.train.trainer import train

    cfg = load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={toy_beir}",
            "train.steps=4",
            "model.tied=false",
            "negatives.source=none",
            "negatives.num=0",
            "ltre.enabled=true",
            "ltre.top_k=10",
            "ltre.max_positives=2",
            "checkpoint.every=2",
            "eval.every=0",
            "eval.final_test=false",
            "export.at_end=false",
            "log.every=1",
            "log.tensorboard=false",
        ],
    )
    final = train(cfg, tmp_path / "run", progress=False)
    assert final["step"] == 4
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train/loss"]) and "train/retrieved_mrr@10" in r for r in logged if "train/loss" in r)
    params, spec, _, _ = load_workdir(tmp_path / "run")
    start, _, _ = load(tiny_model, tied=False)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params, start)
    assert max(jax.tree.leaves(moved["passage"])) == 0.0
    assert max(jax.tree.leaves(moved["query"])) > 0.0


def test_positive_slots_are_checked_for_every_training_query_at_setup(toy):
    from types import SimpleNamespace

    from jdr.train.objectives.ltre import check_positive_slots

    _, index, _, _ = toy
    qrels = {"a": {"d1"}, "b": {"d2", "d3", "d4"}, "c": {"d5"}}
    source = SimpleNamespace(train_qids=list(qrels), relevant=lambda q: frozenset(qrels[q]))
    check_positive_slots(index, source, 3)
    with pytest.raises(ValueError, match="query 'b' has 3 positives, more than ltre.max_positives=2"):
        check_positive_slots(index, source, 2)
    qrels["c"] = {"dx"}
    with pytest.raises(ValueError, match="query 'c'.*'dx' is not in the index"):
        check_positive_slots(index, source, 3)


def test_jdr_train_refuses_too_many_positives_before_compiling(tiny_model, toy_beir, tmp_path, monkeypatch):
    """A training query with more positives than `ltre.max_positives` is one line naming it at setup, not an
    error when its batch is first drawn (possibly hours in): no step is ever built."""
    import shutil

    from jdr.config import load_config
    from jdr.train import trainer
    from jdr.train.trainer import train

    data = shutil.copytree(toy_beir, tmp_path / "beir")
    with open(data / "qrels" / "train.tsv", "a") as f:
        f.write("q5\td0_1\t1\nq5\td0_2\t1\n")  # q5: 3 positives
    monkeypatch.setattr(trainer, "make_train_step", lambda *a, **k: pytest.fail("a step was built"))
    cfg = load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={data}",
            "train.steps=4",
            "model.tied=false",
            "negatives.source=none",
            "negatives.num=0",
            "ltre.enabled=true",
            "ltre.top_k=10",
            "ltre.max_positives=2",
            "eval.every=0",
            "eval.final_test=false",
            "export.at_end=false",
            "log.tensorboard=false",
        ],
    )
    with pytest.raises(ValueError, match="query 'q5' has 3 positives, more than ltre.max_positives=2"):
        train(cfg, tmp_path / "run", progress=False)


def test_jdr_train_ltre_from_a_whitened_model(tiny_model, toy_beir, tmp_path):
    """`model.path` = a whitened model (`jdr whiten`: a Dense shared by both towers): LTRe trains the query tower,
    and the passage tower and the Dense, which encoded the index, end bit-identical."""
    from jdr.cli import main
    from jdr.config import load_config
    from jdr.models.hf import load
    from jdr.models.workdir import load_workdir
    from jdr.train.trainer import train

    whitened = tmp_path / "whitened"
    assert (
        main(["whiten", "--model", str(tiny_model), "--data", str(toy_beir), "--output", str(whitened), "--dim", "16"])
        == 0
    )
    cfg = load_config(
        "configs/tiny.py",
        [
            f"model.path={whitened}",
            f"data.dataset={toy_beir}",
            "train.steps=2",
            "model.tied=false",
            "negatives.source=none",
            "negatives.num=0",
            "ltre.enabled=true",
            "ltre.top_k=10",
            "ltre.max_positives=2",
            "checkpoint.every=2",
            "eval.every=0",
            "eval.final_test=false",
            "export.at_end=false",
            "log.tensorboard=false",
        ],
    )
    assert train(cfg, tmp_path / "run", progress=False)["step"] == 2
    params, _, _, _ = load_workdir(tmp_path / "run")
    start, _, _ = load(whitened, tied=False)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params, start)
    assert max(jax.tree.leaves(moved["passage"])) == 0.0 and max(jax.tree.leaves(moved["dense"])) == 0.0
    assert max(jax.tree.leaves(moved["query"])) > 0.0
