"""run_loop (jdr.train.loop) with a fake compiled step: when the host waits for the device, optimizer-step hook
cadences under gradient accumulation, stopping, and the metrics writer across a resume."""

import json

import numpy as np
import pytest

from jdr.train.loop import FunctionHook, run_loop
from jdr.train.metrics_writer import MetricsWriter


class DeviceLoss:
    """Stands in for a step's device loss: records when the host materialises it (a device sync)."""

    def __init__(self, step, log, value=1.0):
        self.step, self.log, self.value = step, log, value

    def __array__(self, dtype=None, copy=None):
        self.log.append(("sync", self.step))
        return np.asarray(self.value, dtype=dtype)


def _fake_step(log, nan_at=None):
    def step_fn(state, batch, step):
        log.append(("dispatch", step))
        value = np.nan if step == nan_at else 1.0
        return state + 1, {"loss": DeviceLoss(step, log, value)}

    return step_fn


def _check(step, loss):
    if not np.isfinite(np.asarray(loss)):
        raise FloatingPointError(f"non-finite loss at step {step}")


class Poll:
    """A refresh poll: due every step, needs no metrics, reads the state only at its own refresh steps."""

    every, needs_metrics, at_end, name = 1, False, False, "poll"

    def __init__(self, log, read_every=4):
        self.log, self.read_every = log, read_every

    def __call__(self, loop, *, last):
        if loop.step % self.read_every == 0:
            self.log.append(("read_state", loop.step, loop.state))


def test_hooks_that_need_nothing_do_not_sync_the_device():
    log = []
    loop = run_loop(
        0, 0, 10, lambda s: None, _fake_step(log), [Poll(log)], examples_per_step=1, check_loss=_check, progress=False
    )
    assert loop.step == 10
    syncs = [e[1] for e in log if e[0] == "sync"]
    assert sorted(syncs) == list(range(1, 11))  # every loss is checked exactly once
    for s in syncs:
        # step s's loss is waited for only after step s+1 was dispatched (lag 1) — except where a hook read the
        # state produced by step s (4, 8) and at the end (10)
        after = log.index(("sync", s))
        dispatched_next = ("dispatch", s + 1) in log[:after]
        assert dispatched_next or s in (4, 8, 10), (s, log)
    reads = [e for e in log if e[0] == "read_state"]
    assert [(s, state) for _, s, state in reads] == [(4, 4), (8, 8)]
    for _, s, _ in reads:  # the state a hook reads was checked first
        assert log.index(("sync", s)) < log.index(("read_state", s, s))


def test_non_finite_loss_stops_before_any_hook_reads_the_state():
    log = []
    with pytest.raises(FloatingPointError, match="step 4"):
        run_loop(
            0,
            0,
            10,
            lambda s: None,
            _fake_step(log, nan_at=4),
            [Poll(log)],
            examples_per_step=1,
            check_loss=_check,
            progress=False,
        )
    assert not [e for e in log if e[0] == "read_state"]


def test_cadences_count_optimizer_steps_under_accumulation():
    log, seen = [], []
    hook = FunctionHook(2, lambda loop, last: seen.append((loop.step, loop.state)), name="ckpt")
    loop = run_loop(
        0,
        0,
        4,
        lambda s: None,
        _fake_step(log),
        [hook],
        examples_per_step=1,
        accum=3,
        check_loss=_check,
        progress=False,
    )
    # 3 micro-steps per optimizer step; the hook sees whole optimizer steps only
    assert seen == [(2, 6), (4, 12)] and loop.state == 12
    assert [e[1] for e in log if e[0] == "dispatch"] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_a_hook_can_stop_the_loop():
    def stop(loop, last):
        if loop.step == 3:
            loop.stop = "preempted"

    loop = run_loop(
        0,
        0,
        10,
        lambda s: None,
        _fake_step([]),
        [FunctionHook(1, stop, needs_metrics=False)],
        examples_per_step=1,
        progress=False,
    )
    assert (loop.step, loop.stop, loop.state) == (3, "preempted", 3)


def test_metrics_writer_drops_steps_after_the_resume_point(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4):
        w.write(step, {"loss": step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a line cut short by a crash
    w.close()
    w = MetricsWriter(tmp_path, tensorboard=False, resume_step=2)  # resumed from the step-2 checkpoint
    for step in (3, 4):
        w.write(step, {"loss": step * 10})
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["train/loss"] == 40


def test_accumulated_step_logs_the_mean_over_micro_steps_and_every_example(monkeypatch):
    """grad_accum_steps=3: the logged loss / grad_norm are the means of the 3 micro-steps (not the last one's), and
    examples/s counts the 3 micro-batches of an optimizer step. The clock is fake: 1 s per micro-step."""
    import types

    import jdr.train.loop as loop_module

    clock = [0.0]
    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    seen = []

    def step_fn(state, batch, step):
        clock[0] += 1.0
        return state + 1, {"loss": float(state), "grad_norm": 10.0 * state}

    hook = FunctionHook(1, lambda loop, last: seen.append((dict(loop.metrics), loop.examples_per_second)))
    run_loop(
        0,
        0,
        2,
        lambda s: None,
        step_fn,
        [hook],
        examples_per_step=4,
        accum=3,
        progress=False,
        on_metrics=lambda step, m: {k: float(v) for k, v in m.items()},
    )
    # micro-steps see states 0, 1, 2 (step 1) and 3, 4, 5 (step 2)
    assert [m for m, _ in seen] == [{"loss": 1.0, "grad_norm": 10.0}, {"loss": 4.0, "grad_norm": 40.0}]
    assert [eps for _, eps in seen] == [4.0, 4.0]  # 3 micro-batches of 4 examples in 3 s
