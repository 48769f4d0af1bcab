"""What a run records next to its outputs so it can be rerun: config, seed, package versions, git commit."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from jdr.io import as_path, atomic_write

PACKAGES = (
    "jdr",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "faiss-cpu",
    "numpy",
    "tokenizers",
    "transformers",
    "safetensors",
    "pytrec-eval-terrier",
    "bm25s",
    "ml-collections",
    "tensorboardX",
)


def package_versions() -> dict[str, str]:
    """Installed versions of jdr's dependencies (None for a missing one)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path | None = None) -> str | None:
    """The commit of the checkout jdr runs from, with a `+dirty` suffix for uncommitted changes; None outside git."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo's `model name`; platform's processor string elsewhere), for benchmarks."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record(config: dict, seed: int, **extra) -> dict:
    """The record itself: config, seed, versions, commit, host, devices, start time."""
    import jax

    return {
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "argv": sys.argv,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def write_run_record(directory, config: dict, seed: int, name: str = "run.json", **extra):
    """Write `run_record(...)` as JSON in `directory` (local or gs://, atomically) and return its path."""
    path = as_path(directory) / name
    with atomic_write(path) as f:
        json.dump(run_record(config, seed, **extra), f, indent=2, sort_keys=True)
    return path
