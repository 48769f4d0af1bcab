"""Test set-up. XLA_FLAGS must be set before jax is imported anywhere: 8 fake CPU devices for the pmap tests."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`$JDR_SHARED` or `../shared` beside the repo root."""
    env = os.environ.get("JDR_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    d = shared_dir() / "data" / "scifact"
    if not (d / "corpus.jsonl").exists():
        pytest.skip(f"SciFact not found at {d} (set JDR_SHARED)")
    return d


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    d = shared_dir() / "data" / "reference"
    if not (d / "minilm_embeddings.npy").exists():
        pytest.skip(f"reference embeddings not found at {d} (set JDR_SHARED)")
    return d


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        from jdr.models.hf import find_minilm
    except ImportError as e:  # pragma: no cover - models package broken
        raise
    try:
        return find_minilm()
    except FileNotFoundError as e:
        pytest.skip(str(e))
