"""`jdr train` with the cross-encoder and distillation objectives, end to end on the tiny config (8 fake devices):
the cross-encoder workdir and export rerank alike, a distilled bi-encoder trains on `jdr score` output, and bad
configs / unscored groups are one line before anything compiles."""

import json

import numpy as np
import pytest

from jdr.cli import main
from jdr.config import ConfigError, load_config
from jdr.data.beir import load_beir
from jdr.errors import DataError
from jdr.evaluate import compute_metrics, read_trec_run
from jdr.models.cross_encoder import score_texts
from jdr.models.cross_encoder_hf import load_cross_encoder
from jdr.train.trainer import train

CE = [
    "train.objective=cross_encoder",
    "negatives.source=bm25",
    "negatives.num=2",
    "data.dev_queries=0",
    "eval.final_test=False",
    "train.steps=4",
    "checkpoint.every=2",
    "log.every=2",
]


def _cfg(tiny_model, toy_beir, *overrides):
    return load_config("configs/tiny.py", [f"model.path={tiny_model}", f"data.dataset={toy_beir}", *overrides])


def test_cross_encoder_trains_exports_and_reranks(tiny_model, toy_beir, tmp_path):
    workdir = tmp_path / "ce"
    final = train(_cfg(tiny_model, toy_beir, *CE), workdir, progress=False)
    assert final["step"] == 4 and np.isfinite(final["train/loss"]) and "train/accuracy" in final
    exported, spec, tok = load_cross_encoder(workdir / "export")
    trained, wspec, _ = load_cross_encoder(workdir)  # the workdir is a cross-encoder source too
    # the pair budget of training (query 16 + passage 32 - 1) is the export's; the workdir keeps both budgets
    assert wspec.max_length == spec.max_length == 16 + 32 - 1 and wspec.query_max_length == 16
    start, _, _ = load_cross_encoder(tiny_model, seed=0)
    q, p = ["cancer tumor growth"] * 2, ["tumor cancer of the brain", "virus infection"]
    a = score_texts(exported, spec, tok, q, p, progress=False)
    np.testing.assert_allclose(a, score_texts(trained, spec, tok, q, p, progress=False), atol=1e-6)
    assert not np.allclose(a, score_texts(start, spec, tok, q, p, progress=False))  # training moved it
    assert main(["export", "--workdir", str(workdir), "--output", str(tmp_path / "cli_export")]) == 0
    again, _, _ = load_cross_encoder(tmp_path / "cli_export")
    np.testing.assert_allclose(score_texts(again, spec, tok, q, p, progress=False), a, atol=1e-6)
    run = tmp_path / "bm25.trec"
    assert main(["search", "--bm25", "--data", str(toy_beir), "--output", str(run)]) == 0
    assert (
        main(
            [
                "rerank",
                "--model",
                str(workdir),
                "--run",
                str(run),
                "--data",
                str(toy_beir),
                "--depth",
                "5",
                "--output",
                str(tmp_path / "reranked.trec"),
            ]
        )
        == 0
    )
    reranked = read_trec_run(tmp_path / "reranked.trec")
    assert set(compute_metrics(load_beir(toy_beir, "test").qrels, reranked)) >= {"ndcg@10"}
    assert all(len(docs) == 5 for docs in reranked.values())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["negatives.source=ann", "negatives.refresh_every=2"], "cannot mine dense negatives"),
        (["data.dev_queries=4"], "data.dev_queries=0"),
        (["cross_encoder.loss=listnet"], "cross_encoder.loss must be one of"),
    ],
)
def test_cross_encoder_bad_config_is_one_line(tiny_model, toy_beir, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        train(_cfg(tiny_model, toy_beir, *CE, *overrides), tmp_path / "w", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def scored(tiny_model, toy_beir, tmp_path_factory):
    """`jdr mine` groups of the toy set scored by a (random) cross-encoder with `jdr score`."""
    from jdr.models.cross_encoder_hf import export_cross_encoder

    root = tmp_path_factory.mktemp("distill")
    params, spec, _ = load_cross_encoder(tiny_model, seed=5)
    ce = export_cross_encoder(params, spec, tiny_model, root / "ce")
    assert (
        main(
            ["mine", "--data", str(toy_beir), "--source", "bm25", "--num", "3", "--output", str(root / "groups.jsonl")]
        )
        == 0
    )
    assert (
        main(
            ["score", "--model", str(ce), "--input", str(root / "groups.jsonl"), "--output", str(root / "scored.jsonl")]
        )
        == 0
    )
    return root / "scored.jsonl"


def _distill(tiny_model, toy_beir, path, *extra):
    return _cfg(
        tiny_model,
        toy_beir,
        "train.objective=distill",
        "data.source=jsonl",
        f"data.jsonl.path={path}",
        "negatives.source=file",
        "negatives.num=2",
        "eval.every=0",
        "eval.final_test=False",
        "train.steps=3",
        "checkpoint.every=3",
        "log.every=1",
        *extra,
    )


def test_distilled_bi_encoder_trains_on_scored_groups(tiny_model, toy_beir, scored, tmp_path):
    final = train(
        _distill(tiny_model, toy_beir, scored, "distill.loss=kl", "distill.info_nce_weight=0.5"),
        tmp_path / "kd",
        progress=False,
    )
    assert final["step"] == 3 and np.isfinite(final["train/loss"])
    assert {"train/distill_loss", "train/top1_agreement", "train/info_nce_loss"} <= set(final)
    lines = [json.loads(x) for x in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in lines if "train/loss" in r]) == 3


def test_group_without_scores_is_one_line_before_compile(tiny_model, toy_beir, scored, tmp_path, monkeypatch):
    import jdr.train.trainer as trainer

    records = [json.loads(x) for x in scored.read_text().splitlines()]
    del records[6]["negative_passages"][0]["score"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(trainer, "_make_step", lambda *a, **k: pytest.fail("the step was built before the check"))
    with pytest.raises(DataError, match="bad.jsonl:7: .*has no teacher 'score'") as e:
        train(_distill(tiny_model, toy_beir, bad), tmp_path / "w", progress=False)
    assert "\n" not in str(e.value)


def test_distill_needs_a_scored_file_source(tiny_model, toy_beir, tmp_path):
    with pytest.raises(ConfigError, match="data.source=jsonl"):
        train(
            _cfg(tiny_model, toy_beir, "train.objective=distill", "negatives.source=file"),
            tmp_path / "w",
            progress=False,
        )
