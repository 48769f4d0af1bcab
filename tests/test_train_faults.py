"""Faults during `jdr train`: a refresh that raises or runs out of memory, a disk that fills up during a checkpoint,
a damaged checkpoint. Each ends the run with one line naming what failed, never continues silently, and leaves the
last good checkpoint usable: the rerun resumes from it and ends where an undisturbed run ends."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jdr.cli import main
from jdr.config import load_config
from jdr.models.workdir import load_workdir
from jdr.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.py")
BASE = [
    "train.steps=6",
    "checkpoint.every=2",
    "eval.every=0",
    "eval.final_test=false",
    "export.at_end=false",
    "log.tensorboard=false",
    "log.every=3",
]


def _overrides(tiny_model, toy_beir, *extra):
    return [f"model.path={tiny_model}", f"data.dataset={toy_beir}", *BASE, *extra]


def _cli(overrides, workdir):
    return [
        "train",
        "--config",
        TINY,
        "--workdir",
        str(workdir),
        "--no-progress",
        *[f"--config.{o}" for o in overrides],
    ]


def _leaves(workdir, step=None):
    params, _, _, at = load_workdir(workdir, step=step)
    return at, [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("jdr: error:")]
    assert len(lines) == 1, err
    return lines[0]


# sync: the second refresh (step 4) fails before the step-4 checkpoint; async: the first build (started at step
# 2) fails in its thread and surfaces at whichever later poll (or the end of training) collects it.
@pytest.mark.parametrize("mode,failing_build,step", [("sync", 2, 4), ("async", 1, 2)])
def test_refresh_out_of_memory_ends_the_run_with_one_line(
    tiny_model, toy_beir, tmp_path, monkeypatch, capsys, mode, failing_build, step
):
    import jdr.negatives.refresh as refresh

    real, calls = refresh.ann_index, []

    def ann_index(*args, **kwargs):  # a refresh's index build runs out of memory
        calls.append(1)
        if len(calls) == failing_build:
            raise MemoryError("std::bad_alloc while building the faiss index")
        return real(*args, **kwargs)

    monkeypatch.setattr(refresh, "ann_index", ann_index)
    over = _overrides(
        tiny_model, toy_beir, "negatives.source=ann", "negatives.refresh_every=2", f"negatives.refresh_mode={mode}"
    )
    workdir = tmp_path / "run"
    capsys.readouterr()
    assert main(_cli(over, workdir)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"negatives refresh for step {step} failed: MemoryError: std::bad_alloc" in line
    assert not (workdir / "final_metrics.json").exists()  # the run did not go on as if nothing happened
    timing = json.loads((workdir / "timing.json").read_text())
    assert timing["stopped"]
    last_good, _ = _leaves(workdir)
    if mode == "async":
        assert last_good in (2, 4, 6)
        return
    assert last_good == 2
    monkeypatch.setattr(refresh, "ann_index", real)
    assert main(_cli(over, workdir)) == 0  # the last good checkpoint resumes
    assert _leaves(workdir)[0] == 6


def _damage(step_dir: Path, how: str) -> None:
    biggest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    if how == "truncated":
        biggest.write_bytes(data[: len(data) // 2])
    else:  # bytes flipped in the middle: decompression fails, or the arrays no longer match their CRC32
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
        biggest.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished_run(tiny_model, toy_beir, tmp_path_factory):
    """A 4-step run with checkpoints at 2 and 4, and its step-4 parameters."""
    over = _overrides(tiny_model, toy_beir, "train.steps=4")
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(TINY, over), workdir, progress=False)
    return over, workdir, _leaves(workdir)[1]


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_checkpoint_is_one_line_and_the_one_before_resumes(finished_run, tmp_path, capsys, how):
    over, original, at4 = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    _damage(workdir / "checkpoints" / "4", how)
    capsys.readouterr()
    # resuming the finished run reads step 4: it must fail loudly, not train from garbage
    assert main(_cli(over, workdir)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"checkpoint {workdir / 'checkpoints' / '4'} cannot be read" in line
    assert "move it aside to resume from step 2" in line
    shutil.move(workdir / "checkpoints" / "4", tmp_path / "damaged-4")
    assert main(_cli(over, workdir)) == 0
    step, again = _leaves(workdir)
    assert step == 4
    for a, b in zip(at4, again):
        assert np.array_equal(a, b)  # resumed from step 2 to the same step-4 parameters


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
from jdr import checkpoint
real_save = checkpoint.Checkpointer.save

def save(self, step, *args, **kwargs):
    if step == 4:  # the disk fills up once step 2 is on disk, just before the step-4 checkpoint
        self.wait()
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
    return real_save(self, step, *args, **kwargs)

checkpoint.Checkpointer.save = save
from jdr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_full_disk_during_a_checkpoint(tiny_model, toy_beir, tmp_path):
    """An async save (orbax's default, as in real runs) that fails surfaces at the next save, naming its step."""
    over = _overrides(tiny_model, toy_beir, "checkpoint.async_save=true")
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *_cli(over, workdir)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert f"writing checkpoint {workdir / 'checkpoints' / '4'} failed" in line
    assert "the last complete checkpoint is step 2" in line
    assert _leaves(workdir)[0] == 2  # step 4 does not count; step 2 is intact
    out = train(load_config(TINY, over), workdir, progress=False)  # space again: resumes from step 2
    assert out["step"] == 6 and _leaves(workdir)[0] == 6
