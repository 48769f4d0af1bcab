"""SPANN-style index: closure, RNG and pruning rules on hand-built points, balance, exactness, save/load, errors."""

import json

import faiss
import numpy as np
import pytest

from jdr.index.clustering import balanced_kmeans, spann_distance
from jdr.index.spann import SpannIndex, build_spann, head_candidates, head_distances, probe_lists, select_replicas

# Hand-built 2-D heads (metric l2: squared distances). x = origin:
#   a (1, 0)    d = 1     the nearest head
#   c (0, -1.2) d = 1.44  other side of x from a: |a - c|^2 = 2.44 > 1.44, the RNG rule keeps it
#   b (2, 0)    d = 4     behind a: |a - b|^2 = 1 < 4, the RNG rule skips it
#   e (0, 5)    d = 25
HEADS = np.array([[1, 0], [2, 0], [0, -1.2], [0, 5]], np.float32)
A, B, C, E = 0, 1, 2, 3


def _replicas(x, eps1, max_replicas, rng=True, heads=HEADS, metric="l2"):
    dist, ids = head_candidates(np.asarray(x, np.float32), heads, len(heads), metric)
    sel, sel_d = select_replicas(
        dist, ids, head_distances(heads, metric), eps1=eps1, max_replicas=max_replicas, rng=rng
    )
    return [[h for h in row if h >= 0] for row in sel], sel_d


def test_closure_rule():
    # (1 + eps1) * 1 must reach 1.44 for c and 4 for b
    assert _replicas([[0, 0]], eps1=0.43, max_replicas=8, rng=False)[0] == [[A]]
    assert _replicas([[0, 0]], eps1=0.44, max_replicas=8, rng=False)[0] == [[A, C]]
    assert _replicas([[0, 0]], eps1=3.0, max_replicas=8, rng=False)[0] == [[A, C, B]]
    assert _replicas([[0, 0]], eps1=24.0, max_replicas=8, rng=False)[0] == [[A, C, B, E]]
    assert _replicas([[0, 0]], eps1=24.0, max_replicas=2, rng=False)[0] == [[A, C]]  # max_replicas caps
    got, dist = _replicas([[0, 0]], eps1=0.44, max_replicas=3, rng=False)
    np.testing.assert_allclose(dist[0], [1.0, 1.44, np.inf], rtol=1e-6)


def test_rng_rule():
    # b is within the closure but a, already taken, is nearer to b than x is: skipped; c and e are kept
    assert _replicas([[0, 0]], eps1=24.0, max_replicas=8, rng=True)[0] == [[A, C, E]]
    # a point beyond b: b is nearer than x to every other head (a: 1 < 4, c: 5.44 < 10.44, e: 29 < 34)
    assert _replicas([[3, 0]], eps1=100.0, max_replicas=8, rng=True)[0] == [[B]]
    assert _replicas([[3, 0]], eps1=100.0, max_replicas=8, rng=False)[0] == [[B, A, C, E]]
    # several vectors in one batch, each by its own rule
    got = _replicas([[0, 0], [3, 0], [0, 4.9]], eps1=0.44, max_replicas=8, rng=True)[0]
    assert got == [[A, C], [B], [E]]


def test_ip_distance_is_cosine_distance():
    # unit vectors: 1 - <x, c> = |x - c|^2 / 2, so the rules pick the same replicas under both metrics
    rng = np.random.default_rng(0)
    heads = rng.standard_normal((6, 3)).astype(np.float32)
    heads /= np.linalg.norm(heads, axis=1, keepdims=True)
    x = rng.standard_normal((50, 3)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ip, _ = _replicas(x, 0.5, 4, heads=heads, metric="ip")
    l2, _ = _replicas(x, 0.5, 4, heads=heads, metric="l2")
    assert ip == l2 and any(len(r) > 1 for r in ip)
    np.testing.assert_allclose(spann_distance(np.float32([0.25]), "ip"), [0.75])


def test_pruning_rule():
    dist = np.array([[1.0, 1.05, 1.2, 2.0], [0.5, 0.5, 0.55, 0.56]], np.float32)
    ids = np.array([[7, 3, 9, 1], [2, 4, 6, 8]])
    np.testing.assert_array_equal(probe_lists(dist, ids, eps2=0.1, max_probe=4), [[7, 3, -1, -1], [2, 4, 6, -1]])
    np.testing.assert_array_equal(probe_lists(dist, ids, eps2=None, max_probe=2), [[7, 3], [2, 4]])
    np.testing.assert_array_equal(probe_lists(dist, ids, eps2=0.0, max_probe=3), [[7, -1, -1], [2, 4, -1]])


def _clustered(n=3000, d=16, seed=0, unit=True):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((20, d)).astype(np.float32)
    x = means[rng.integers(0, 20, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    q = means[rng.integers(0, 20, 40)] + 0.6 * rng.standard_normal((40, d)).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


@pytest.mark.parametrize("member_heads", [False, True])
def test_balanced_kmeans_bounds_cluster_sizes(member_heads):
    x, _ = _clustered()
    heads, labels = balanced_kmeans(x, 100, member_heads=member_heads, branching=8)
    sizes = np.bincount(labels, minlength=len(heads))
    assert sizes.max() <= 100 and sizes.min() >= 1 and len(heads) >= 30
    np.testing.assert_allclose(np.linalg.norm(heads, axis=1), 1.0, rtol=1e-5)
    if member_heads:  # heads are data vectors
        assert (faiss.knn(heads, x, 1, metric=faiss.METRIC_L2)[0] < 1e-10).all()
    # identical rows: k-means cannot split them, the even split still bounds the sizes
    same = np.repeat(x[:1], 250, axis=0)
    h, lab = balanced_kmeans(same, 40)
    assert np.bincount(lab).max() <= 40 and len(h) >= 7


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_every_list_probed_is_exact(metric, tmp_path):
    x, q = _clustered(unit=metric == "ip")
    index = build_spann(x, tmp_path / "s", metric=metric, list_size=80, eps1=1.0, max_replicas=4, rng=False)
    assert index.meta["stats"]["duplication"] > 1.5  # replicas exist, so de-duplication is exercised
    hits = index.search(q, 10, max_probe=index.meta["heads"])
    exact_s, exact_r = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    np.testing.assert_array_equal(hits.rows, exact_r)
    np.testing.assert_allclose(hits.scores, exact_s, rtol=1e-4, atol=1e-4)
    assert (hits.scanned == index.meta["entries"]).all() and (hits.probed == index.meta["heads"]).all()


def test_duplication_raises_recall_and_limits(tmp_path):
    x, q = _clustered(n=4000)
    exact = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]

    def recall(hits):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits.rows, exact)])

    one = build_spann(x, tmp_path / "one", list_size=60, max_replicas=1)
    heads = one.heads
    dup = build_spann(x, tmp_path / "dup", list_size=60, eps1=0.5, max_replicas=8, rng=False, heads=heads)
    assert one.meta["stats"]["duplication"] == 1.0 and dup.meta["stats"]["duplication"] > 2
    h1, h8 = one.search(q, 10, max_probe=2), dup.search(q, 10, max_probe=2)
    assert recall(h8) > recall(h1) and h8.scanned.mean() > h1.scanned.mean()
    near2 = faiss.knn(q, heads, 2, metric=faiss.METRIC_INNER_PRODUCT)[1]
    assert (h1.probed == 2).all() and (h1.scanned == np.diff(one.offsets)[near2].sum(1)).all()
    # pruning reads fewer lists
    assert one.search(q, 10, max_probe=8, eps2=0.01).probed.mean() < 8
    # posting_limit: overfull lists keep their primaries and the closest replicas; no vector is lost
    capped = build_spann(
        x, tmp_path / "cap", list_size=60, eps1=0.5, max_replicas=8, rng=False, heads=heads, posting_limit=70
    )
    sizes = np.diff(capped.offsets)
    primaries = np.bincount(faiss.knn(x, heads, 1, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 0], minlength=len(heads))
    assert (sizes <= np.maximum(70, primaries)).all() and sizes.max() < np.diff(dup.offsets).max()
    assert len(np.unique(capped.posting_ids)) == len(x)


def test_save_load_round_trip(tmp_path):
    x, q = _clustered()
    built = build_spann(x, tmp_path / "s", list_size=100, eps1=0.2, max_replicas=4)
    again = SpannIndex.load(tmp_path / "s")
    a, b = built.search(q, 5, max_probe=3), again.search(q, 5, max_probe=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["params"]["eps1"] == 0.2 and meta["count"] == len(x) and meta["metric"] == "ip"
    mem = again.memory_bytes()
    assert mem["disk"] == meta["entries"] * (16 * 4 + 8) and mem["ram"] < mem["disk"]
    # every vector's entries hold the vector itself
    np.testing.assert_array_equal(np.asarray(again.postings), x[np.asarray(again.posting_ids)])
    # rebuilding over the same path replaces it whole
    build_spann(x[:500], tmp_path / "s", list_size=100)
    assert SpannIndex.load(tmp_path / "s").ntotal == 500


def test_error_lines(tmp_path):
    x, q = _clustered(n=600)
    with pytest.raises(ValueError, match="unit-norm"):
        build_spann(x * 2, tmp_path / "bad", list_size=100)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileNotFoundError, match="no such SPANN index"):
        SpannIndex.load(tmp_path / "none")
    path = tmp_path / "s"
    index = build_spann(x, path, list_size=100)
    with pytest.raises(ValueError, match="dimension 8 but the index has dimension 16"):
        index.search(q[:, :8], 5)

    def broken(change, match):
        target = tmp_path / f"broken{broken.n}"
        broken.n += 1
        build_spann(x, target, list_size=100)
        change(target)
        with pytest.raises(ValueError, match=match) as e:
            SpannIndex.load(target)
        assert "\n" not in str(e.value) and str(target) in str(e.value)

    broken.n = 0
    broken(lambda p: (p / "offsets.npy").unlink(), "not a SPANN index .missing offsets.npy")
    broken(lambda p: (p / "meta.json").write_text("{not json"), "corrupt SPANN index")
    broken(lambda p: (p / "meta.json").write_text('{"format": "other"}'), "not jdr-spann version 1")
    broken(lambda p: (p / "postings.npy").write_bytes((p / "postings.npy").read_bytes()[:200]), "corrupt SPANN index")
    broken(lambda p: np.save(p / "offsets.npy", np.arange(3)), "offsets.npy has shape")
    broken(lambda p: np.save(p / "heads.npy", np.zeros((2, 3), np.float32)), "heads.npy has shape")


@pytest.mark.parametrize("n", [5, 50, 1000])
def test_corpus_within_one_list_builds_and_is_exact(n, tmp_path):
    # the whole corpus fits the default list size (1000): one head, the root is a leaf
    x, q = _clustered(n=n)
    index = build_spann(x, tmp_path / "s")
    assert index.meta["heads"] == 1
    k = min(5, n)
    hits = index.search(q, k, max_probe=index.meta["heads"])
    exact_s, exact_r = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_array_equal(hits.rows, exact_r)
    np.testing.assert_allclose(hits.scores, exact_s, rtol=1e-4, atol=1e-4)
