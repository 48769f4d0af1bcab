"""The real trainer end to end on a tiny config: 8 fake devices, checkpoint, exact resume, export, reload."""

import json

import jax
import numpy as np
import pytest

from jdr.config import ConfigError, load_config
from jdr.models.workdir import load_workdir
from jdr.train.trainer import train


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

    # where the time went, and the peak host memory, in the workdir and the final metrics
    timing = json.loads((workdir / "timing.json").read_text())
    assert {"setup", "train_step", "data", "hook/eval", "hook/checkpoint", "test_eval", "export"} <= set(
        timing["phases"]
    )
    assert timing["compile"]["xla_seconds"] > 0 and timing["compile"]["executables"] >= 1
    assert timing["steps"] == 20 and not timing["stopped"]
    total = sum(p["seconds"] for p in timing["phases"].values())
    assert total == pytest.approx(timing["wall_seconds"], rel=0.02)  # exclusive phases sum to the wall time
    assert final["peak_host_memory_mib"] == pytest.approx(timing["peak_host_memory_mib"], rel=0.05)
    assert final["peak_host_memory_mib"] > 100
    assert json.loads((workdir / "final_metrics.json").read_text())["peak_host_memory_mib"] > 100


def test_evaluate_prints_the_checkpoint_and_offers_the_best(tiny_model, toy_beir, tmp_path, capsys):
    """`--step best` picks the best dev score saved with a checkpoint; the step and lengths used are printed; a
    checkpoint is ranked only by a dev score of its own step, and dev logs only what a top-100 run supports."""
    import logging

    from jdr.checkpoint import Checkpointer
    from jdr.cli import main

    workdir = tmp_path / "run"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("absl").addHandler(handler)
    try:
        train(
            _cfg(
                tiny_model,
                toy_beir,
                "train.steps=6",
                "eval.every=3",
                "checkpoint.every=2",
                "checkpoint.keep=5",
                "eval.final_test=false",
                "export.at_end=false",
            ),
            workdir,
            progress=False,
        )
    finally:
        logging.getLogger("absl").removeHandler(handler)
    # steps 2 and 4 have no score of their own and are saved without one, quietly
    assert not [r for r in records if "tracked_metric" in r.getMessage()]
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [2, 4, 6]
        # eval ran at 3 and 6: step 4 must not carry step 3's score
        assert ckpt.metrics(2) is None and ckpt.metrics(4) is None
        assert ckpt.metrics(6)["dev/ndcg@10"] >= 0 and ckpt.best_step("dev/ndcg@10") == 6
    dev = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if "dev/ndcg@10" in x]
    assert [r["step"] for r in dev] == [3, 6]
    assert "dev/recall@100" in dev[0] and "dev/recall@1000" not in dev[0]  # dev retrieves 100
    capsys.readouterr()
    assert main(["evaluate", "--model", str(workdir), "--step", "best", "--data", str(toy_beir), "--json"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint step 6 (best), query 16 / passage 32 tokens" in err


@pytest.mark.parametrize(
    "negatives",
    [
        ["negatives.source=random", "train.rng_impl=rbg"],  # the faster CPU dropout PRNG resumes exactly too
        # ANCE in synchronous mode: BM25 warm start, ANN refresh every 4 steps, table saved with the checkpoint; a
        # third of the queries re-mined per refresh, so the rotation must survive the restart as well
        [
            "negatives.source=ann",
            "negatives.refresh_every=4",
            "negatives.refresh_mode=sync",
            "negatives.refresh_fraction=0.34",
        ],
        # gradient accumulation: the cadences count optimizer steps, so no checkpoint holds a partial accumulation
        ["negatives.source=random", "train.grad_accum_steps=3"],
    ],
    ids=["rbg", "ance-rotation", "grad-accum"],
)
def test_resume_is_bit_identical(tiny_model, toy_beir, tmp_path, negatives, capfd):
    over = [
        "train.steps=12",
        "checkpoint.every=4",
        "eval.every=0",
        "eval.final_test=false",
        "export.at_end=false",
        "log.every=1",
        *negatives,
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(tiny_model, toy_beir, *over), straight, progress=True)
    # a synchronous refresh shows its own progress while the step bar stands still
    assert ("refresh: passage" in capfd.readouterr().err) == ("negatives.source=ann" in negatives)
    # a crash after step 6: steps 5 and 6 ran (and were logged) after the step-4 checkpoint
    out = train(_cfg(tiny_model, toy_beir, *over), resumed, progress=False, stop_at=6)
    assert out["stopped"] and not out["preempted"]
    train(_cfg(tiny_model, toy_beir, *over), resumed, progress=False)  # a new process would start like this
    (sa, a), (sb, b) = _params(straight), _params(resumed)
    assert sa == sb == 12
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    from jdr.checkpoint import Checkpointer

    with Checkpointer(resumed / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [8, 12]  # optimizer steps, whatever the accumulation
    # every step logged once, in order, as in the uninterrupted run
    logged = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == list(range(1, 13))
    assert [r["train/loss"] for r in logged if "train/loss" in r] == [r["train/loss"] for r in ref if "train/loss" in r]


def test_config_errors_before_compile(tiny_model, toy_beir, tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        _cfg(tiny_model, toy_beir, "train.lrr=1e-3")
    with pytest.raises(ValueError, match="divisible"):
        train(_cfg(tiny_model, toy_beir, "train.global_batch_size=12"), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # nothing half-written


def test_async_ance_refresh_swaps_tables_while_training(tiny_model, toy_beir, tmp_path):
    over = [
        "train.steps=12",
        "checkpoint.every=0",
        "eval.every=0",
        "eval.final_test=false",
        "export.at_end=false",
        "negatives.source=hybrid",
        "negatives.num=2",
        "negatives.hybrid=bm25:1,ann:1",
        "negatives.refresh_every=3",
        "negatives.refresh_mode=async",
    ]
    workdir = tmp_path / "ance"
    final = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)
    refreshes = final["negatives/refreshes"]
    assert refreshes, "no refresh was delivered"
    assert [r["version"] for r in refreshes] == list(range(1, len(refreshes) + 1))
    assert all(r["age_steps"] >= 0 and r["timings"]["encode_s"] > 0 for r in refreshes)
    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("negatives/version" in r for r in logged)


@pytest.mark.slow
def test_continue_from_a_workdir_untied_export_and_pooling(tiny_model, toy_beir, tmp_path, caplog):
    """`model.path=<workdir>` starts from the workdir's trained encoder; `model.pooling` / `model.normalize` override
    the checkpoint's settings (with a warning for a dot product at a cosine temperature); untied towers export as
    two sentence-transformers dirs, each with its own length, both lengths recorded for jdr."""
    import logging

    from jdr.models import load  # any model reference, a workdir too

    first = tmp_path / "first"
    short = ["train.steps=2", "checkpoint.every=2", "eval.every=0", "eval.final_test=false", "log.every=1"]
    train(_cfg(tiny_model, toy_beir, *short, "export.at_end=false"), first, progress=False)
    params, spec, _ = load(first)  # a workdir is a model source like an HF dir
    wparams, wspec, _, step = load_workdir(first)
    assert step == 2 and spec == wspec
    for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(wparams)):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    second = tmp_path / "second"
    with caplog.at_level(logging.WARNING, logger="jdr.train.trainer"):
        train(
            _cfg(
                tiny_model,
                toy_beir,
                *short,
                f"model.path={first}",
                "model.tied=False",
                "model.pooling=cls",
                "model.normalize=False",
            ),
            second,
            progress=False,
        )
    assert any("train.temperature=0.05 is sized for cosine scores" in r.getMessage() for r in caplog.records)
    described = json.loads((second / "encoder" / "spec.json").read_text())
    assert (described["pooling"], described["normalize"], described["tied"]) == ("cls", False, False)
    assert (second / "encoder" / "tokenizer.json").is_file()  # copied from the first workdir's encoder/
    assert not (second / "export" / "model.safetensors").exists()
    for tower, length in (("query", 16), ("passage", 32)):
        d = second / "export" / tower
        assert json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"] == length
        assert json.loads((d / "jdr_encoder.json").read_text())["query_max_length"] == 16
        p, s, _ = load(d)
        assert (s.query_max_length, s.passage_max_length, s.pooling, s.normalize) == (16, 32, "cls", False)


def test_temperature_warning_only_for_unnormalised_dot_products(tiny_model, toy_beir):
    from jdr.models.hf import load
    from jdr.train.trainer import check_temperature

    cfg = _cfg(tiny_model, toy_beir)
    _, cosine, _ = load(tiny_model)  # the tiny model's sentence-transformers files normalise
    _, dot, _ = load(tiny_model, normalize=False, pooling="cls")
    assert cosine.normalize and check_temperature(cfg, cosine) is None
    assert "saturates" in check_temperature(cfg, dot)
    cfg.train.temperature = 1.0
    assert check_temperature(cfg, dot) is None
    # the unset placeholders mean "the checkpoint's own"; set, they take what any field takes
    assert cfg.model.pooling is None and cfg.model.normalize is None
    assert _cfg(tiny_model, toy_beir, "model.normalize=false", "model.pooling=max").model.normalize is False
    with pytest.raises(ConfigError, match="model.normalize"):
        _cfg(tiny_model, toy_beir, "model.normalize=mean")
