"""Test set-up. XLA_FLAGS must be set before jax is imported anywhere: 8 fake CPU devices for the pmap tests."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# The end-to-end tests compile the same train step in several `train()` calls (straight run, stop, resume):
# a session-wide persistent compilation cache turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jdr-jax-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`$JDR_SHARED` or `../shared` beside the repo root."""
    env = os.environ.get("JDR_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def missing(reason: str):
    """Skip a test whose data is absent (a developer without ../shared), but fail it in CI (`CI=true`): there a
    skip would pass silently what was meant to be checked."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true: the data must be present", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    d = shared_dir() / "data" / "scifact"
    if not (d / "corpus.jsonl").exists():
        missing(f"SciFact not found at {d} (set JDR_SHARED)")
    return d


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    d = shared_dir() / "data" / "reference"
    if not (d / "minilm_embeddings.npy").exists():
        missing(f"reference embeddings not found at {d} (set JDR_SHARED)")
    return d


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        from jdr.models.hf import find_minilm
    except ImportError:  # pragma: no cover - models package broken
        raise
    try:
        return find_minilm()
    except FileNotFoundError as e:
        missing(str(e))


TOPICS = (
    "cancer tumor",
    "virus infection",
    "brain blood",
    "gene dna",
    "immune response",
    "drug therapy",
    "protein receptor",
    "cell growth",
)


def write_toy_beir(path: Path, *, n_train: int = 32, n_test: int = 8, docs_per_topic: int = 6) -> Path:
    """A small BEIR dir whose queries share words with their positive doc (so retrieval is learnable)."""
    import json
    import random

    rng = random.Random(0)
    filler = "the of and a to in is was for with that on are by as at".split()
    path.mkdir(parents=True, exist_ok=True)
    docs = []
    for t, topic in enumerate(TOPICS):
        for j in range(docs_per_topic):
            words = topic.split() + rng.sample(filler, 5) + [f"{chr(97 + j)}{chr(97 + t)}"]
            docs.append({"_id": f"d{t}_{j}", "title": topic, "text": " ".join(rng.sample(words, len(words)))})
    with open(path / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    queries, qrels = [], {"train": [], "test": []}
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        doc = docs[(i * 5) % len(docs)]
        qid = f"q{i}"
        queries.append({"_id": qid, "text": f"{doc['text'].split()[0]} {doc['title']} {doc['_id'][1:]}"})
        qrels[split].append((qid, doc["_id"]))
    with open(path / "queries.jsonl", "w") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    (path / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        with open(path / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d in rows:
                f.write(f"{q}\t{d}\t1\n")
    return path


@pytest.fixture(scope="session")
def toy_beir(tmp_path_factory) -> Path:
    return write_toy_beir(tmp_path_factory.mktemp("toy_beir"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from jdr.models.testing import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", max_seq_length=32)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """faiss on one thread: its OpenMP threads fighting other test processes for 2 cores slow OPQ ~10x."""
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory caches (traces, compiled executables) after each test module: one pytest process runs
    hundreds of compiles, and the live objects they leave make later modules 2-3x slower (RSS grew past 4 GB).
    The persistent compilation cache above still turns repeated compiles into cache hits."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
