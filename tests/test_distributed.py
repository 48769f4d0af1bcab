"""jdr.distributed: row arithmetic, config resolution, and a real 2-process × 4-device CPU run vs 1 × 8."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from jdr.distributed import DistributedConfig, host_rows, resolve_config, shard_rows

WORKER = Path(__file__).with_name("_multihost_worker.py")
# Wall-clock budget for all workers together: ~1-2 min on 2 idle cores (XLA compiles the pmapped BERT step in each
# process); generous for loaded CI machines, and every worker is killed when it runs out.
TIMEOUT_S = 600


@pytest.mark.parametrize("n,count", [(16, 1), (16, 2), (24, 4), (64, 8)])
def test_host_rows_concatenate_to_the_global_batch_in_order(n, count):
    rows = np.arange(n)
    parts = [rows[host_rows(n, p, count)] for p in range(count)]
    assert {len(x) for x in parts} == {n // count}
    np.testing.assert_array_equal(np.concatenate(parts), rows)


def test_host_rows_rejects_uneven_batches_and_bad_index():
    with pytest.raises(ValueError, match="not divisible"):
        host_rows(10, 0, 4)
    with pytest.raises(ValueError, match="process_index"):
        host_rows(8, 2, 2)


@pytest.mark.parametrize("n,count", [(13, 2), (13, 4), (3, 4), (0, 2), (100, 7)])
def test_shard_rows_matches_array_split(n, count):
    rows = np.arange(n)
    expected = np.array_split(rows, count)
    for p in range(count):
        np.testing.assert_array_equal(rows[shard_rows(n, p, count)], expected[p])


def test_resolve_config_sources():
    assert resolve_config(env={}) == DistributedConfig("single")
    assert resolve_config("h:1", 2, 1, env={}) == DistributedConfig("explicit", "h:1", 2, 1)
    env = {"JDR_COORDINATOR": "node1:8476", "JDR_NUM_PROCESSES": "4", "JDR_PROCESS_ID": "3"}
    assert resolve_config(env=env) == DistributedConfig("explicit", "node1:8476", 4, 3)
    assert resolve_config(env={**env, "JDR_DISTRIBUTED": "off"}).mode == "single"
    assert resolve_config(env={"JDR_NUM_PROCESSES": "1"}).mode == "single"
    assert resolve_config(env={"JDR_DISTRIBUTED": "auto"}).mode == "auto"
    srun = {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "gpu[01-02]"}
    assert resolve_config(env=srun).mode == "auto"
    # An sbatch batch shell (no srun step) is one process.
    assert resolve_config(env={"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}).mode == "single"


@pytest.mark.parametrize(
    "env,match",
    [
        ({"JDR_COORDINATOR": "h:1", "JDR_NUM_PROCESSES": "2"}, "JDR_PROCESS_ID"),
        ({"JDR_COORDINATOR": "h:1", "JDR_NUM_PROCESSES": "2", "JDR_PROCESS_ID": "2"}, "must lie in"),
        ({"JDR_COORDINATOR": "h", "JDR_NUM_PROCESSES": "2", "JDR_PROCESS_ID": "0"}, "host:port"),
        ({"JDR_NUM_PROCESSES": "two"}, "JDR_NUM_PROCESSES='two'"),
        ({"JDR_DISTRIBUTED": "yes"}, "JDR_DISTRIBUTED"),
    ],
)
def test_resolve_config_errors_name_the_variable(env, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        resolve_config(env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker_env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JDR_", "SLURM_", "JAX_COORDINATOR"))}
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_workers(commands: list[tuple[list[str], dict]], log_dir: Path | None = None) -> None:
    """Start all, wait with a timeout, kill every survivor on any failure so CI never hangs. Each worker writes
    to its own log file (a pipe nobody reads could fill and block a worker mid-collective); a failure or a
    timeout reports the tail of every worker's log."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="jdr-workers-"))
    logs = [log_dir / f"worker{i}.log" for i in range(len(commands))]
    procs = []
    for (cmd, env), path in zip(commands, logs):
        with open(path, "w") as f:
            procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + TIMEOUT_S

    def tails() -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text()[-3000:]}" for p in logs)

    try:
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"workers still running after {TIMEOUT_S} s:\n{tails()}") from None
            if p.returncode != 0:
                raise AssertionError(f"worker {p.args} exited {p.returncode}:\n{tails()}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    from jdr.models.testing import write_tiny_model

    model = write_tiny_model(tmp_path / "model", num_layers=1, max_seq_length=16)  # 1 layer: compile time dominates
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = _free_port()
    base = [sys.executable, str(WORKER), "--model-dir", str(model), "--steps", "3", "--corpus", "13"]
    _run_workers(
        [
            (
                base
                + [
                    "--coordinator",
                    f"localhost:{port}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                    "--out",
                    str(multi),
                ],
                _worker_env(4),
            )
            for i in range(2)
        ]
        + [(base + ["--out", str(single)], _worker_env(8))],
        tmp_path,
    )
    p0, p1, ref = _load(multi / "process_0.npz"), _load(multi / "process_1.npz"), _load(single / "process_0.npz")

    # pmap numbers devices process by process, so host_rows' contiguous split lines up with axis_index.
    np.testing.assert_array_equal(p0["axis_index"], np.arange(4))
    np.testing.assert_array_equal(p1["axis_index"], np.arange(4, 8))
    np.testing.assert_array_equal(ref["axis_index"], np.arange(8))
    assert bool(p0["primary"]) and not bool(p1["primary"])

    params = sorted(k for k in ref if k.startswith("param/"))
    assert params and params == sorted(k for k in p0 if k.startswith("param/"))
    assert not np.allclose(ref["losses"][0], ref["losses"][-1]), "training did not move the loss"
    for k in params:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # replicas agree across processes
        np.testing.assert_allclose(p0[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(p0["losses"], ref["losses"], rtol=1e-5)

    assert ref["embeddings"].shape == (13, 32)
    np.testing.assert_allclose(p0["embeddings"], ref["embeddings"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(p0["embeddings"], p1["embeddings"])


def _train_command(workdir: Path, model: Path, data: Path, steps: int) -> list[str]:
    """The real `jdr train` entry point (what tpu_scripts/ launch on every host), on the tiny config."""
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
    return [
        sys.executable,
        "-c",
        "import sys; from jdr.cli import main; sys.exit(main())",
        "train",
        "--config",
        str(tiny),
        "--workdir",
        str(workdir),
        "--no-progress",
        f"--config.model.path={model}",
        f"--config.data.dataset={data}",
        f"--config.train.steps={steps}",
        "--config.checkpoint.every=4",
        "--config.eval.every=4",
        "--config.log.every=2",
    ]


def _leaves(workdir: Path, step: int | None = None) -> tuple[int, list[np.ndarray]]:
    import jax

    from jdr.models.workdir import load_workdir

    params, _, _, at = load_workdir(workdir, step=step)
    return at, [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


@pytest.mark.slow
def test_two_process_jdr_train_checkpoints_and_resumes_on_one_process(tiny_model, toy_beir, tmp_path):
    """`jdr train` on 2 processes × 4 devices (checkpoints, dev eval, sharded test eval, export by process 0)
    matches 1 × 8; its step-4 checkpoint resumes on 1 process × 8 devices and ends where 1 × 8 straight ends."""
    import json
    import shutil

    from jdr.config import load_config
    from jdr.train.trainer import train

    multi, single, resumed = tmp_path / "multi", tmp_path / "single", tmp_path / "resumed"
    port = _free_port()
    workers = []
    for i in range(2):
        env = {
            **_worker_env(4),
            "JDR_COORDINATOR": f"localhost:{port}",
            "JDR_NUM_PROCESSES": "2",
            "JDR_PROCESS_ID": str(i),
        }
        workers.append((_train_command(multi, tiny_model, toy_beir, steps=8), env))
    _run_workers(workers, tmp_path)

    overrides = [
        f"model.path={tiny_model}",
        f"data.dataset={toy_beir}",
        "train.steps=8",
        "checkpoint.every=4",
        "eval.every=4",
        "log.every=2",
    ]
    ref = train(load_config("configs/tiny.py", overrides), single, progress=False)

    # Process 0 wrote the shared outputs once; the multi-host run's numbers are the single-host run's.
    got = json.loads((multi / "final_metrics.json").read_text())
    assert got["step"] == ref["step"] == 8 and (multi / "export" / "model.safetensors").is_file()
    for name in ("train/loss", "test/ndcg@10", "test/recall@100"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, err_msg=name)
    dev = [json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in dev if "dev/ndcg@10" in r] == [4, 8]
    (sm, pm), (ss, ps) = _leaves(multi), _leaves(single)
    assert sm == ss == 8
    for a, b in zip(pm, ps):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # Resume the 2-process run's step-4 checkpoint with one process of 8 devices (preemption onto other hardware).
    shutil.copytree(multi, resumed)
    shutil.rmtree(resumed / "checkpoints" / "8")
    out = train(load_config("configs/tiny.py", overrides), resumed, progress=False)
    assert out["step"] == 8
    _, pr = _leaves(resumed)
    for a, b in zip(pr, ps):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    _, p4 = _leaves(multi, step=4)
    assert not np.allclose(p4[0], pr[0])  # the resumed run trained past step 4


def test_async_refresh_is_decided_once_for_every_process(tmp_path):
    """Two processes whose refresh builds take very different times swap in the same tables at the same steps and
    skip the same refreshes (process 0 decides); a build that fails on process 1 raises on both, at the same step."""
    import json

    port, out = _free_port(), tmp_path / "out"
    out.mkdir()
    _run_workers(
        [
            (
                [
                    sys.executable,
                    str(WORKER),
                    "--refresh-protocol",
                    "--coordinator",
                    f"localhost:{port}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                    "--out",
                    str(out),
                ],
                _worker_env(1),
            )
            for i in range(2)
        ],
        tmp_path,
    )
    p0, p1 = (json.loads((out / f"refresh_{i}.json").read_text()) for i in range(2))
    assert p0["swapped"] and p0["swapped"] == p1["swapped"] and p0["skipped"] == p1["skipped"]
    # process 0's own build takes 0.05 s: it swaps at the first poll after the build started, and so does process 1
    assert [s[0] - s[2] for s in p0["swapped"] if s[0] != "finish"] == [1] * len(
        [s for s in p0["swapped"] if s[0] != "finish"]
    )
    (step0, message0), (step1, message1) = p0["failure"], p1["failure"]
    assert step0 == step1 == 3
    assert message1.startswith("negatives refresh for step 2 failed: MemoryError: out of memory")
    assert message0 == f"process 1: {message1}"
