"""Preemption: SIGTERM a real `jdr train` (1 process × 8 devices, and 2 processes × 4 devices) at a random step.
Every process saves the same step and exits with EXIT_RESTART; the same command run again resumes from that
checkpoint and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_distributed import _free_port, _leaves, _run_workers, _worker_env

from jdr.train.preemption import EXIT_RESTART, PreemptionWatch

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
STEPS = 30
TIMEOUT_S = 600


def _command(workdir: Path, model: Path, data: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from jdr.cli import main; sys.exit(main())",
        "train",
        "--config",
        str(TINY),
        "--workdir",
        str(workdir),
        "--no-progress",
        f"--config.model.path={model}",
        f"--config.data.dataset={data}",
        f"--config.train.steps={STEPS}",
        "--config.checkpoint.every=1000",
        "--config.eval.every=0",
        "--config.eval.final_test=false",
        "--config.export.at_end=false",
        "--config.log.every=1",
        "--config.log.tensorboard=false",
    ]


def _run(workdir: Path, model: Path, data: Path, n: int, logs: Path) -> None:
    """An uninterrupted (or resumed) run to the end: in this process for one process, else as `n` workers."""
    if n == 1:
        from jdr.config import load_config
        from jdr.train.trainer import train

        overrides = [a[len("--config.") :] for a in _command(workdir, model, data) if a.startswith("--config.")]
        assert train(load_config(TINY, overrides), workdir, progress=False)["step"] == STEPS
        return
    _run_workers([(_command(workdir, model, data), env) for env in _envs(n)], logs)


def _envs(n: int) -> list[dict]:
    if n == 1:
        return [_worker_env(8)]
    port = _free_port()
    return [
        {
            **_worker_env(8 // n),
            "JDR_COORDINATOR": f"localhost:{port}",
            "JDR_NUM_PROCESSES": str(n),
            "JDR_PROCESS_ID": str(i),
        }
        for i in range(n)
    ]


def _logged_step(workdir: Path) -> int:
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [int(m.group(1)) for line in lines if (m := re.match(r'\{"step": (\d+)', line))]
    return max(steps, default=0)


def _preempt(workdir: Path, model: Path, data: Path, n: int, at: int, target: int, logs: Path) -> list[int]:
    """Start `n` processes, SIGTERM process `target` once step `at` is logged; -> the step each process saved."""
    procs, files = [], []
    for i, env in enumerate(_envs(n)):
        f = open(logs / f"preempted{i}.log", "w")
        files.append(f)
        procs.append(subprocess.Popen(_command(workdir, model, data), env=env, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while _logged_step(workdir) < at:
            assert all(p.poll() is None for p in procs), "a process ended before the signal"
            assert time.monotonic() < deadline, f"step {at} not reached in {TIMEOUT_S} s"
            time.sleep(0.02)
        procs[target].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p, f in zip(procs, files):
            if p.poll() is None:
                p.kill()
                p.wait()
            f.close()
    texts = [(logs / f"preempted{i}.log").read_text() for i in range(n)]
    assert codes == [EXIT_RESTART] * n, "\n".join(t[-3000:] for t in texts)
    saved = [re.search(r"preempted: checkpoint of step (\d+) saved", t) for t in texts]
    assert all(saved), "\n".join(t[-3000:] for t in texts)
    return [int(m.group(1)) for m in saved]


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2], ids=["1-process", "2-processes"])
def test_sigterm_saves_the_same_step_everywhere_and_resumes_exactly(tiny_model, toy_beir, tmp_path, n):
    rng = random.Random()
    at, target = rng.randint(3, STEPS // 2), rng.randrange(n)
    note = f"SIGTERM to process {target} of {n} at step {at}"
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    _run(straight, tiny_model, toy_beir, n, tmp_path)

    saved = _preempt(preempted, tiny_model, toy_beir, n, at, target, tmp_path)
    assert len(set(saved)) == 1, f"{note}: processes saved different steps {saved}"
    step = saved[0]
    assert at <= step < STEPS, note
    assert _leaves(preempted)[0] == step  # the preemption checkpoint is the one on disk
    timing = (preempted / "timing.json").read_text()
    assert '"stopped": true' in timing

    _run(preempted, tiny_model, toy_beir, n, tmp_path)  # the same command again: resumes
    (sa, a), (sb, b) = _leaves(straight), _leaves(preempted)
    assert sa == sb == STEPS, note
    for x, y in zip(a, b):
        assert np.array_equal(x, y), note
    records = [json.loads(x) for x in (preempted / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "train/loss" in r]
    assert logged == list(range(1, STEPS + 1)), note


def test_watch_answers_after_a_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    watch = PreemptionWatch()
    assert not watch.reached(1)
    signal.raise_signal(signal.SIGTERM)
    assert watch.reached(2)
    watch.close()
    assert signal.getsignal(signal.SIGTERM) is before
