"""A `gs://` workdir (what tpu_scripts/tpu_pod_train.sh asks for) on a fake bucket: every file of the run lands in
the bucket, nothing in the working directory, the run resumes from the bucket and is read back from it."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from _fake_gcs import fake_gcs

from jdr.config import load_config
from jdr.io import as_path, atomic_dir, atomic_path, atomic_write
from jdr.models.workdir import load_workdir
from jdr.train.trainer import train


def test_unsupported_uris_are_one_line():
    with pytest.raises(ValueError, match=r"s3://b/run: only local paths and gs:// URIs are supported"):
        as_path("s3://b/run")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"gs://b/run: gs:// paths need gcsfs"):
            as_path("gs://b/run")


def test_atomic_writers_on_a_bucket(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with fake_gcs(tmp_path / "bucket-root", monkeypatch) as root:
        with atomic_write("gs://b/x/file.json") as f:
            f.write("{}")
        with atomic_path("gs://b/x/blob.bin") as p:
            p.write_bytes(b"\0\1")
        with atomic_dir("gs://b/x/dir") as d:
            (d / "sub").mkdir()
            (d / "sub" / "a.txt").write_text("a")
        with pytest.raises(RuntimeError), atomic_write("gs://b/x/never.json") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
        assert (root / "b" / "x" / "file.json").read_text() == "{}"
        assert (root / "b" / "x" / "blob.bin").read_bytes() == b"\0\1"
        assert (root / "b" / "x" / "dir" / "sub" / "a.txt").read_text() == "a"
        assert not (root / "b" / "x" / "never.json").exists()
    assert not (tmp_path / "gs:").exists()


def test_train_on_a_gs_workdir_resumes_and_reads_back(tiny_model, toy_beir, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a gs:// path taken for a local one would appear here as ./gs:/...
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={toy_beir}",
            "train.steps=4",
            "checkpoint.every=2",
            "eval.every=2",
            "log.every=1",
        ],
    )
    with fake_gcs(tmp_path / "bucket-root", monkeypatch) as root:
        out = train(cfg, "gs://bkt/runs/tiny", progress=False, stop_at=3)  # a crash after step 3
        assert out["stopped"]
        final = train(cfg, "gs://bkt/runs/tiny", progress=False)  # the restarted job: resumes from the bucket
        params, spec, _, step = load_workdir("gs://bkt/runs/tiny")
    assert list(cwd.iterdir()) == []
    run = root / "bkt" / "runs" / "tiny"
    assert final["step"] == step == 4 and np.isfinite(final["test/ndcg@10"])
    for name in (
        "run.json",
        "encoder/spec.json",
        "encoder/tokenizer.json",
        "checkpoints/4/commit_success.txt",
        "metrics.jsonl",
        "timing.json",
        "final_metrics.json",
        "export/model.safetensors",
        "export/modules.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert logged == [1, 2, 3, 4]  # step 3, logged before the crash, once
    assert json.loads((run / "final_metrics.json").read_text())["step"] == 4
    # the bucket holds the real thing: the exported encoder is the step-4 checkpoint
    from jdr.models.hf import load

    exported, _, _ = load(run / "export")
    for a, b in zip(jax.tree_util.tree_leaves(exported), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
