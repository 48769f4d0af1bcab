"""Matryoshka objective: the loss is the weighted sum of per-prefix InfoNCE computed by hand; it composes with the
one train step on 8 devices, the false-negative mask, EBR's hinge and GradCache; config errors are one line;
`jdr train` runs it with a model prefix and `--dim` evaluates the result."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from test_grad_cache import BAG_PARAMS, GRAD_PROBE, N_DEV, _assert_trees_close, _batch, _run, _train_cfg, bag_encode

from jdr import losses
from jdr.train.grad_cache import chunked_encoder
from jdr.train.objectives.contrastive import Contrastive
from jdr.train.objectives.matryoshka import Matryoshka, matryoshka_loss, parse_dims


def _info_nce_by_hand(q, p, group_size, temperature):
    """numpy InfoNCE: query i's softmax over every passage, its positive at row i*G."""
    logits = q @ p.T / temperature
    logits = logits - logits.max(1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(log_prob[np.arange(len(q)), np.arange(len(q)) * group_size])


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("renormalize", [True, False])
def test_loss_is_the_weighted_sum_of_per_prefix_info_nce_by_hand(renormalize):
    r = np.random.default_rng(0)
    q, p = _unit(r.normal(size=(4, 16))), _unit(r.normal(size=(12, 16)))  # G = 3
    dims, weights = (16, 8, 4), (1.0, 0.5, 2.0)
    loss, aux = matryoshka_loss(
        losses.info_nce,
        jnp.asarray(q),
        jnp.asarray(p),
        dims=dims,
        weights=weights,
        renormalize=renormalize,
        group_size=3,
        temperature=0.1,
    )
    cut = (lambda x, d: _unit(x[:, :d])) if renormalize else (lambda x, d: x[:, :d])
    per = {d: _info_nce_by_hand(cut(q, d), cut(p, d), 3, 0.1) for d in dims}
    np.testing.assert_allclose(float(loss), sum(w * per[d] for d, w in zip(dims, weights)), rtol=1e-5)
    for d in dims:
        np.testing.assert_allclose(float(aux[f"loss@{d}"]), per[d], rtol=1e-5)
    assert "accuracy" in aux  # the widest prefix's aux


def test_one_full_width_prefix_is_the_contrastive_step():
    """dims = (full width,) with weight 1 on embeddings the encoder normalised: the plain contrastive gradient."""

    def unit_encode(*a):
        x = bag_encode(*a)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    batch = _batch(2, N_DEV * 2, 2)
    kw = dict(loss_name="info_nce", loss_kwargs={"temperature": 0.05})
    mrl = Matryoshka(kw["loss_name"], kw["loss_kwargs"], dims=(8,), weights=(1.0,), renormalize=True)
    from jdr.train.step import make_train_step

    got, got_m = _run(make_train_step(unit_encode, mrl, tx=GRAD_PROBE, dropout=False), BAG_PARAMS, batch, N_DEV)
    want, want_m = _run(
        make_train_step(unit_encode, Contrastive(**kw), tx=GRAD_PROBE, dropout=False), BAG_PARAMS, batch, N_DEV
    )
    np.testing.assert_allclose(got_m["loss"], want_m["loss"], rtol=1e-6)
    _assert_trees_close(got.opt_state, want.opt_state)


def test_composes_with_false_negatives_hardest_in_batch_and_grad_cache():
    """On 8 devices with a false-negative mask and EBR's k = 2: GradCache (chunks of 1) gives the same loss and
    gradient as the plain step, and the mask and hinge reach every prefix's loss."""
    from jdr.train.step import make_train_step

    batch = _batch(3, N_DEV * 2, 2)
    fn = np.zeros((N_DEV * 2, N_DEV * 4), bool)
    fn[0, 5] = fn[3, 20] = True
    batch["false_negatives"] = fn
    mrl = Matryoshka(
        "info_nce",
        {"temperature": 0.05, "hard_in_batch_k": 2, "hard_in_batch_weight": 1.0, "hard_in_batch_margin": 0.2},
        dims=(8, 4, 2),
        weights=(1.0, 1.0, 0.5),
    )
    plain, plain_m = _run(make_train_step(bag_encode, mrl, tx=GRAD_PROBE, dropout=False), BAG_PARAMS, batch, N_DEV)
    cached, cached_m = _run(
        make_train_step(chunked_encoder(bag_encode, 1), mrl, tx=GRAD_PROBE, dropout=False), BAG_PARAMS, batch, N_DEV
    )
    for k in ("loss", "loss@8", "loss@4", "loss@2", "false_negatives", "hard_in_batch_loss"):
        np.testing.assert_allclose(cached_m[k], plain_m[k], rtol=1e-5, err_msg=k)
    assert float(plain_m["false_negatives"][0]) == 2.0
    np.testing.assert_allclose(
        plain_m["loss"], plain_m["loss@8"] + plain_m["loss@4"] + 0.5 * plain_m["loss@2"], rtol=1e-5
    )
    _assert_trees_close(cached.opt_state, plain.opt_state)


@pytest.mark.parametrize(
    "dims,weights,message",
    [
        ("384,x", "", "expected comma-separated integers"),
        ("64,64", "", "distinct dims >= 1"),
        ("0", "", "distinct dims >= 1"),
        ("64,32", "1", "need 2 weights >= 0"),
        ("64,32", "0,0", "not all 0"),
    ],
)
def test_bad_dims_and_weights_are_one_line(dims, weights, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_dims(dims, weights)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.matryoshka_dims=64,32", "train.matryoshka_dims is read by train.objective=matryoshka only"),
        ("train.objective=matryoshka", "train.matryoshka_dims: need distinct dims"),
    ],
)
def test_train_config_errors_before_compile(tiny_model, toy_beir, tmp_path, override, message):
    from jdr.config import ConfigError
    from jdr.train.trainer import train

    with pytest.raises(ConfigError, match=message):
        train(_train_cfg(tiny_model, toy_beir, override), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_jdr_train_matryoshka_with_prefixes_then_evaluate_at_a_dim(tiny_model, toy_beir, tmp_path, capsys):
    """`jdr train` with the objective, query/passage prefixes and a width above the model's: one line before any
    compile; a valid run logs every prefix's loss, records the prefixes, and `jdr evaluate --dim` reads it."""
    from jdr.cli import main
    from jdr.train.trainer import train

    keys = [
        "train.objective=matryoshka",
        "train.matryoshka_dims=32,16,8",
        "model.query_prefix=query: ",
        "model.passage_prefix=passage: ",
    ]
    with pytest.raises(ValueError, match="64 exceeds the model's embedding width 32"):
        train(
            _train_cfg(tiny_model, toy_beir, *keys[:1], "train.matryoshka_dims=64,8", *keys[2:]),
            tmp_path / "bad",
            progress=False,
        )
    assert not (tmp_path / "bad").exists()
    final = train(_train_cfg(tiny_model, toy_beir, *keys), tmp_path / "run", progress=False)
    assert final["step"] == 3
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"train/loss@32", "train/loss@8"} <= set(r) for r in logged if "train/loss" in r)
    spec = json.loads((tmp_path / "run" / "encoder" / "spec.json").read_text())
    assert (spec["query_prefix"], spec["passage_prefix"]) == ("query: ", "passage: ")
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(toy_beir), "--dim", "8", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ndcg@10"] <= 1
