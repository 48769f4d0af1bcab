"""An ANCE refresh in flight when a run stops (the real trainer, tiny model, a slow build, a preemption at a chosen
step): at a preemption an async build gets `negatives.refresh_grace_seconds` to finish and its table is saved
with the checkpoint; a build that does not finish in time is recorded as owed, and the resumed run starts a
refresh at its first step; a sync refresh (nothing ever in flight) is unchanged."""

import json
import threading

import pytest

from jdr.checkpoint import Checkpointer
from jdr.config import load_config
from jdr.train.trainer import train

BASE = [
    "train.steps=8",
    "checkpoint.every=0",
    "eval.every=0",
    "eval.final_test=false",
    "export.at_end=false",
    "log.every=1",
    "log.tensorboard=false",
    "negatives.source=ann",
]


def _cfg(tiny_model, toy_beir, *extra):
    return load_config("configs/tiny.py", [f"model.path={tiny_model}", f"data.dataset={toy_beir}", *BASE, *extra])


class SlowBuild:
    """Wraps the real ANCE build: while `gate` is closed every build waits on it (a refresh that takes minutes);
    once `abandon` is set a build still waiting returns at once with nothing (the stopped run is gone)."""

    def __init__(self, monkeypatch, *, gated: bool):
        import jdr.negatives.refresh as negatives_refresh

        self.gate, self.abandon, self.started = threading.Event(), threading.Event(), []
        if not gated:
            self.gate.set()
        real = negatives_refresh.ann_build_fn

        def ann_build_fn(*args, **kwargs):
            build = real(*args, **kwargs)

            def slow(params, step):
                self.started.append(step)
                assert self.gate.wait(120), "the test never opened the gate"
                return None if self.abandon.is_set() else build(params, step)

            return slow

        monkeypatch.setattr(negatives_refresh, "ann_build_fn", ann_build_fn)

    def release(self, *, abandon: bool = False) -> None:
        if abandon:
            self.abandon.set()
        self.gate.set()


def _preempt_at(monkeypatch, at: int, on_notice=lambda: None) -> None:
    """Replace the SIGTERM watch by one whose notice comes at step `at` (calling `on_notice` then)."""
    import jdr.train.preemption as preemption

    class Watch:
        def reached(self, step: int) -> bool:
            if step == at:
                on_notice()
            return step == at

        def close(self) -> None:
            pass

    monkeypatch.setattr(preemption, "PreemptionWatch", Watch)


def _spy_saves(monkeypatch) -> dict:
    """step -> (negatives table version, hook_state) of every checkpoint the trainer hands to orbax."""
    saves, real = {}, Checkpointer.save

    def save(self, step, *args, **kwargs):
        negatives = kwargs.get("negatives")
        version = None if negatives is None else int(negatives["meta"][0])
        saves[step] = (version, kwargs.get("hook_state"))
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save)
    return saves


def _negatives_records(workdir) -> list[dict]:
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "negatives/version" in r]


def test_preemption_waits_for_an_async_build_within_the_grace_and_saves_its_table(
    tiny_model, toy_beir, tmp_path, monkeypatch
):
    build = SlowBuild(monkeypatch, gated=True)
    _preempt_at(monkeypatch, 3, on_notice=build.release)  # the step-2 build finishes only after the notice
    saves = _spy_saves(monkeypatch)
    over = ["negatives.refresh_every=2", "negatives.refresh_mode=async", "negatives.refresh_grace_seconds=120"]
    workdir = tmp_path / "run"
    try:
        out = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)
    finally:
        build.release(abandon=True)
    assert out["preempted"] and out["step"] == 3
    assert build.started == [2]
    assert saves == {3: (1, None)}  # the new table (v0 + 1) is in the preemption checkpoint, nothing owed
    records = _negatives_records(workdir)
    assert [(r["step"], r["negatives/version"], r["negatives/age_steps"]) for r in records] == [(3, 1, 1)]


def test_build_past_the_grace_is_owed_and_the_resumed_run_refreshes_at_its_first_step(
    tiny_model, toy_beir, tmp_path, monkeypatch
):
    over = ["negatives.refresh_every=3", "negatives.refresh_mode=async", "negatives.refresh_grace_seconds=0.2"]
    workdir = tmp_path / "run"
    with monkeypatch.context() as patch:
        build = SlowBuild(patch, gated=True)  # the step-3 build is still running at the step-4 notice
        _preempt_at(patch, 4)
        saves = _spy_saves(patch)
        try:
            out = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)
        finally:
            build.release(abandon=True)
    assert out["preempted"] and out["step"] == 4 and build.started == [3]
    assert saves == {4: (0, {"refresh_owed": 3})}  # the old table, and the debt
    assert not _negatives_records(workdir)

    build = SlowBuild(monkeypatch, gated=False)
    final = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)  # the same command again
    assert final["step"] == 8
    # 5 is no multiple of 3: only the owed refresh starts a build there, from the restored run's params
    assert build.started[0] == 5
    first = final["negatives/refreshes"][0]
    assert (first["started_step"], first["owed_from"], first["version"]) == (5, 3, 1)
    assert [r["owed_from"] for r in final["negatives/refreshes"][1:]] == [None] * (len(build.started) - 1)
    records = _negatives_records(workdir)
    assert records[0]["negatives/owed_from"] == 3 and records[0]["negatives/version"] == 1
    timing = json.loads((workdir / "timing.json").read_text())
    assert timing["refresh"]["owed"] == 1


def test_sync_refresh_at_a_preemption_owes_nothing_and_resumes_on_its_cadence(
    tiny_model, toy_beir, tmp_path, monkeypatch
):
    over = ["negatives.refresh_every=3", "negatives.refresh_mode=sync", "negatives.refresh_grace_seconds=120"]
    workdir = tmp_path / "run"
    with monkeypatch.context() as patch:
        build = SlowBuild(patch, gated=False)
        _preempt_at(patch, 4)
        saves = _spy_saves(patch)
        out = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)
    assert out["preempted"] and build.started == [3]
    assert saves == {4: (1, None)}  # the step-3 table was swapped in at step 3; nothing was in flight
    build = SlowBuild(monkeypatch, gated=False)
    final = train(_cfg(tiny_model, toy_beir, *over), workdir, progress=False)
    assert build.started == [6]  # the next multiple of refresh_every, as before
    assert [(r["started_step"], r["owed_from"], r["version"]) for r in final["negatives/refreshes"]] == [(6, None, 2)]


def test_negative_grace_is_a_config_error(tiny_model, toy_beir, tmp_path):
    from jdr.config import ConfigError

    with pytest.raises(ConfigError, match="negatives.refresh_grace_seconds must be >= 0"):
        train(_cfg(tiny_model, toy_beir, "negatives.refresh_grace_seconds=-1"), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()
