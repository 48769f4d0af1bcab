"""The data path through the real trainer (tiny model, 8 fake devices): `jdr mine` -> `jdr train` on the mined
JSONL with exact mid-epoch resume, and the in-batch false-negative mask reaching the loss and the logs."""

import json

import jax
import numpy as np
import pytest

from jdr.cli import main
from jdr.config import load_config
from jdr.data.testing import write_topic_beir
from jdr.models.workdir import load_workdir
from jdr.train.trainer import prepare, train

QUICK = [
    "eval.every=0",
    "eval.final_test=false",
    "export.at_end=false",
    "train.global_batch_size=8",
    "log.every=1",
    "log.tensorboard=false",
]


def _params(workdir):
    _, _, _, step = load_workdir(workdir)
    return step, jax.tree_util.tree_leaves(load_workdir(workdir)[0])


def _logged(workdir, key):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if key in r}


@pytest.mark.slow  # three tiny runs sharing one compile: 53-106 s on the loaded 2-core machine
def test_mine_then_train_from_the_file_resumes_exactly(tiny_model, toy_beir, tmp_path, capsys):
    mined = tmp_path / "train.jsonl"
    assert main(["mine", "--data", str(toy_beir), "--depth", "10", "--num", "3", "--output", str(mined)]) == 0
    cfg = [
        "data.source=jsonl",
        f"data.jsonl.path={mined}",
        "negatives.source=file",
        "negatives.depth=3",
        "train.steps=7",
        "checkpoint.every=2",
    ]
    over = [f"model.path={tiny_model}", f"data.dataset={toy_beir}", *QUICK, *cfg]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    final = train(load_config("configs/tiny.py", over), straight, progress=False)
    assert final["step"] == 7 and np.isfinite(final["train/loss"])
    record = json.loads((straight / "run.json").read_text())
    assert record["data"]["source"]["name"] == str(mined) and record["data"]["source"]["train_queries"] == 28
    # 28 training pairs / 8 = 3 batches an epoch: the stop at step 4 is inside epoch 1
    assert train(load_config("configs/tiny.py", over), resumed, progress=False, stop_at=4)["stopped"]
    train(load_config("configs/tiny.py", over), resumed, progress=False)  # a new process would start like this
    (sa, a), (sb, b) = _params(straight), _params(resumed)
    assert sa == sb == 7
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    assert sorted(_logged(straight, "train/false_negatives")) == list(range(1, 8))  # logged every step


@pytest.mark.slow  # two compiles (with and without the mask input): 60-145 s on the loaded 2-core machine
def test_false_negative_mask_reaches_the_loss_and_the_log(tiny_model, tmp_path):
    """Topics whose every document is relevant to every query of the topic: batches are full of false
    negatives. The count logged per step equals the mask the batch builder computed for that step's batch; with
    the mask off nothing is dropped and the first step's loss (same params, batch, dropout) is higher."""
    data = tmp_path / "topics"
    write_topic_beir(data, topics=3, docs_per_topic=(5, 7), train_queries_per_topic=4, test_queries_per_topic=1)
    over = [
        f"model.path={tiny_model}",
        f"data.dataset={data}",
        *QUICK,
        "train.steps=2",
        "checkpoint.every=0",
        "data.dev_queries=0",
        "negatives.source=random",
    ]
    cfg = load_config("configs/tiny.py", over)
    run = prepare(cfg, tmp_path / "probe")
    expected = {}
    for step in range(1, 3):  # the same batches the run will draw
        fn = run.batches(run.source.next_batch())["false_negatives"]
        expected[step] = float(fn.sum() - fn.shape[0] * fn.shape[1])  # the own positives are never dropped
    assert min(expected.values()) > 0
    masked, plain = tmp_path / "masked", tmp_path / "plain"
    train(cfg, masked, progress=False)
    train(load_config("configs/tiny.py", [*over, "data.mask_false_negatives=false"]), plain, progress=False)
    assert _logged(masked, "train/false_negatives") == expected
    assert set(_logged(plain, "train/false_negatives").values()) == {0.0}
    assert _logged(masked, "train/loss")[1] < _logged(plain, "train/loss")[1]


def test_triplet_with_in_batch_hard_negatives_gets_the_false_negative_mask(tiny_model, tmp_path):
    """EBR (train.loss=triplet, train.hard_in_batch_k > 0) picks each query's hardest in-batch passages: on topics
    where every document of a topic is relevant to every query of it, the batch builder's mask must reach the
    triplet loss as it does info_nce's (known positives are never a hard negative); the count logged equals the
    mask of the step's batch."""
    data = tmp_path / "topics"
    write_topic_beir(data, topics=3, docs_per_topic=(5, 7), train_queries_per_topic=4, test_queries_per_topic=1)
    over = [
        f"model.path={tiny_model}",
        f"data.dataset={data}",
        *QUICK,
        "train.steps=2",
        "checkpoint.every=0",
        "data.dev_queries=0",
        "negatives.source=random",
        "negatives.num=1",
        "train.loss=triplet",
        "train.hard_in_batch_k=2",
    ]
    cfg = load_config("configs/tiny.py", over)
    run = prepare(cfg, tmp_path / "probe")
    fn = run.batches(run.source.next_batch()).get("false_negatives")  # the first batch the run will draw
    assert fn is not None
    expected = float(fn.sum() - fn.shape[0] * fn.shape[1])  # the own positives are never dropped
    assert expected > 0
    train(cfg, tmp_path / "run", progress=False)
    assert _logged(tmp_path / "run", "train/false_negatives")[1] == expected
