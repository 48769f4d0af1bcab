"""faiss build/search/save/load over tiny random data, and the embedding store."""

import json

import numpy as np
import pytest

from jdr.errors import DataError
from jdr.index import build_index, load_embeddings, load_index, save_embeddings, save_index, search, store


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((512, 16)).astype(np.float32)
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    return docs, queries


def test_flat_matches_numpy(data):
    docs, queries = data
    scores, rows = search(build_index(docs, "Flat"), queries, 5)
    dots = queries @ docs.T
    expected = np.argsort(-dots, axis=1)[:, :5]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(dots, expected, 1), rtol=1e-5)


def test_l2_metric(data):
    docs, queries = data
    _, rows = search(build_index(docs, "Flat", metric="l2"), queries, 1)
    d2 = ((queries[:, None] - docs[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(rows[:, 0], d2.argmin(1))


# 4-bit PQ codes keep k-means tiny: 8-bit PQ on 512 vectors takes ~30 s in faiss on a loaded 2-core box.
@pytest.mark.parametrize(
    "factory, kwargs",
    [("IVF8,Flat", {"nprobe": 8}), ("IVF8,PQ4x4", {"nprobe": 8}), ("HNSW16", {"efSearch": 64})],
)
def test_approximate_indexes_find_neighbours(data, factory, kwargs, tmp_path):
    docs, queries = data
    index = build_index(docs, factory, train_sample=400, seed=1)
    assert index.ntotal == len(docs)
    scores, rows = search(index, queries, 10, **kwargs)
    assert rows.shape == (8, 10) and scores.dtype == np.float32 and (rows >= 0).all()
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert overlap >= (0.9 if "PQ" not in factory else 0.2)
    save_index(index, tmp_path / "x.faiss")
    again = load_index(tmp_path / "x.faiss")
    np.testing.assert_array_equal(search(again, queries, 10, **kwargs)[1], rows)


def test_training_is_seeded(data):
    docs, queries = data
    a = search(build_index(docs[:256], "IVF4,PQ2x4", seed=3), queries, 10, nprobe=2)[1]
    b = search(build_index(docs[:256], "IVF4,PQ2x4", seed=3), queries, 10, nprobe=2)[1]
    np.testing.assert_array_equal(a, b)


def test_nprobe_changes_ivf_search(data):
    docs, queries = data
    index = build_index(docs, "IVF16,Flat")
    exact = search(build_index(docs, "Flat"), queries, 10)[1]
    full = search(index, queries, 10, nprobe=16)[1]
    np.testing.assert_array_equal(full, exact)  # visiting every list is exhaustive


def test_errors(data, tmp_path):
    docs, queries = data
    with pytest.raises(ValueError, match="faiss rejects factory 'Nonsense12'"):
        build_index(docs, "Nonsense12")
    with pytest.raises(ValueError, match="dimension 8 but the index has dimension 16"):
        search(build_index(docs), queries[:, :8], 3)
    with pytest.raises(ValueError, match="2-D"):
        build_index(docs[0])
    with pytest.raises(ValueError, match="training faiss index"):
        build_index(docs[:10], "IVF64,Flat")
    with pytest.raises(ValueError, match="nprobe"):
        search(build_index(docs, "HNSW8"), queries, 3, nprobe=4)
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing.faiss")


def test_save_index_failure_leaves_no_file(data, tmp_path, monkeypatch):
    import faiss

    def broken(index, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError):
        save_index(build_index(data[0]), tmp_path / "x.faiss")
    assert list(tmp_path.iterdir()) == []


def test_store_round_trip(data, tmp_path):
    docs, _ = data
    ids = [f"doc{i}" for i in range(len(docs))]
    save_embeddings(tmp_path / "emb", docs, ids, model="m", tower="passage")
    emb, got_ids = load_embeddings(tmp_path / "emb")
    assert isinstance(emb, np.memmap) and got_ids == ids
    np.testing.assert_array_equal(emb, docs)
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    assert meta == {"count": 512, "dims": 16, "dtype": "float32", "model": "m", "tower": "passage"}
    assert not isinstance(load_embeddings(tmp_path / "emb", mmap=False)[0], np.memmap)


def test_store_failure_mid_write_leaves_nothing(data, tmp_path, monkeypatch):
    real_save = np.save

    def half_save(path, arr):
        real_save(path, arr)
        raise OSError("disk full")

    monkeypatch.setattr(store.np, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_embeddings(tmp_path / "emb", data[0], [str(i) for i in range(512)])
    assert list(tmp_path.iterdir()) == []


def test_store_errors(data, tmp_path):
    docs, _ = data
    with pytest.raises(ValueError, match="512 embedding rows but 3 ids"):
        save_embeddings(tmp_path / "e", docs, ["a", "b", "c"])
    with pytest.raises(ValueError, match="one per line"):
        save_embeddings(tmp_path / "e", docs[:1], ["a\nb"])
    save_embeddings(tmp_path / "e", docs[:3], ["a", "b", "c"])
    (tmp_path / "e" / "ids.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"ids.txt: 2 ids but embeddings.npy has shape \(3, 16\)"):
        load_embeddings(tmp_path / "e")
    with pytest.raises(DataError, match="no such file"):
        load_embeddings(tmp_path / "nothing")
