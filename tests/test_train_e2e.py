"""The real trainer end to end on a tiny config: 8 fake devices, checkpoint, exact resume, export, reload."""

import json

import jax
import numpy as np
import pytest

from jdr.config import ConfigError, load_config
from jdr.train.trainer import train
from jdr.train.workdir import load_workdir


def _cfg(tiny_model, toy_beir, *overrides):
    return load_config("configs/tiny.py", [f"model.path={tiny_model}", f"data.dataset={toy_beir}", *overrides])


def _params(workdir):
    params, _, _, step = load_workdir(workdir)
    return step, jax.tree_util.tree_leaves(params)


def test_train_checkpoint_export_reload(tiny_model, toy_beir, tmp_path):
    from jdr.models.hf import load
    from jdr.models.inference import encode_texts

    workdir = tmp_path / "run"
    final = train(_cfg(tiny_model, toy_beir), workdir, progress=False)
    assert final["step"] == 20 and np.isfinite(final["train/loss"])
    assert {"test/ndcg@10", "test/mrr@10", "test/recall@100"} <= set(final)
    record = json.loads((workdir / "run.json").read_text())
    assert record["seed"] == 0 and record["versions"]["jax"] == jax.__version__ and "git_commit" in record
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [5, 10, 15, 20]
    assert any("dev/ndcg@10" in r for r in lines)
    step, trained = _params(workdir)
    assert step == 20
    # the exported HF dir reloads to the trained encoder
    params, spec, tok = load(workdir / "export")
    texts = ["cancer tumor growth", "virus infection of the brain"]
    wparams, wspec, wtok, _ = load_workdir(workdir)
    a = encode_texts(params, spec, tok, texts, tower="query", progress=False)
    b = encode_texts(wparams, wspec, wtok, texts, tower="query", progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    base, _, _ = load(tiny_model)
    assert not np.allclose(jax.tree_util.tree_leaves(base)[0], trained[0])  # training moved the weights

    # the CLI takes the workdir as a model source, and `jdr export` writes the same encoder
    from jdr.cli import main

    assert main(["export", "--workdir", str(workdir), "--output", str(tmp_path / "cli_export"), "--step", "10"]) == 0
    p10, s10, t10 = load(tmp_path / "cli_export")
    assert not np.allclose(encode_texts(p10, s10, t10, texts, tower="query", progress=False), a)  # step 10 != 20
    assert main(["evaluate", "--model", str(workdir), "--data", str(toy_beir), "--json"]) == 0


@pytest.mark.parametrize("negatives", [
    ["negatives.source=random", "train.rng_impl=rbg"],  # the faster CPU dropout PRNG resumes exactly too
    # ANCE in synchronous mode: BM25 warm start, ANN refresh every 4 steps, table saved with the checkpoint
    ["negatives.source=ann", "negatives.refresh_every=4", "negatives.refresh_mode=sync"],
])
def test_resume_is_bit_identical(tiny_model, toy_beir, tmp_path, negatives):
    over = ["train.steps=12", "checkpoint.every=4", "eval.every=0", "eval.final_test=false",
            "export.at_end=false", *negatives]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(tiny_model, toy_beir, *over), straight, progress=False)
    out = train(_cfg(tiny_model, toy_beir, *over), resumed, progress=False, stop_at=8)
    assert out["stopped"]
    train(_cfg(tiny_model, toy_beir, *over), resumed, progress=False)  # a new process would start like this
    (sa, a), (sb, b) = _params(straight), _params(resumed)
    assert sa == sb == 12
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_config_errors_before_compile(tiny_model, toy_beir, tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        _cfg(tiny_model, toy_beir, "train.lrr=1e-3")
    with pytest.raises(ValueError, match="divisible"):
        train(_cfg(tiny_model, toy_beir, "train.global_batch_size=12"), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # nothing half-written


def test_async_ance_refresh_swaps_tables_while_training(tiny_model, toy_beir, tmp_path):
    over = ["train.steps=12", "checkpoint.every=0", "eval.every=0", "eval.final_test=false", "export.at_end=false",
            "negatives.source=hybrid", "negatives.num=2", "negatives.hybrid=bm25:1,ann:1",
            "negatives.refresh_every=3", "negatives.refresh_mode=async"]
    workdir = tmp_path / "ance"
    final = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)
    refreshes = final["negatives/refreshes"]
    assert refreshes, "no refresh was delivered"
    assert [r["version"] for r in refreshes] == list(range(1, len(refreshes) + 1))
    assert all(r["age_steps"] >= 0 and r["timings"]["encode_s"] > 0 for r in refreshes)
    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("negatives/version" in r for r in logged)
