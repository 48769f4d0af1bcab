"""Mixture of memories: merged top-k equals one exact index over the union; names, ids, errors; the CLI."""

import faiss
import numpy as np
import pytest
from test_cli import tiny  # noqa: F401  (module fixture: tiny model + BEIR dir)

from jdr.cli import main
from jdr.evaluate import read_trec_run
from jdr.index import Memories, Memory, build_index, build_spann, save_index
from jdr.index.memories import ids_path, split_id


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Three memories (two faiss Flat files, one SPANN dir) and the queries; doc ids overlap across memories."""
    tmp = tmp_path_factory.mktemp("mem")
    rng = np.random.default_rng(0)
    parts = {"wiki": _unit(rng, 300), "news": _unit(rng, 200), "aug": _unit(rng, 500)}
    paths = {}
    for name, x in parts.items():
        path = tmp / (f"{name}.spann" if name == "aug" else f"{name}.faiss")
        if name == "aug":
            build_spann(x, path, list_size=50, eps1=0.2, max_replicas=2)
        else:
            save_index(build_index(x, "Flat"), path)
        ids_path(path).write_text("".join(f"d{i}\n" for i in range(len(x))))
        paths[name] = path
    return parts, paths, _unit(rng, 25)


def test_merged_ranking_equals_one_exact_index_over_the_union(corpora):
    parts, paths, q = corpora
    mem = Memories.load([str(paths["wiki"]), f"n={paths['news']}", str(paths["aug"])])
    assert mem.names == ["wiki", "n", "aug"]
    aug_heads = mem.memories[2].index.meta["heads"]
    hits = mem.search(q, 20, max_probe=aug_heads)  # every SPANN list probed: exact
    union = np.concatenate([parts["wiki"], parts["news"], parts["aug"]])
    union_ids = [f"wiki:d{i}" for i in range(300)] + [f"n:d{i}" for i in range(200)] + [f"aug:d{i}" for i in range(500)]
    s, r = faiss.knn(q, union, 20, metric=faiss.METRIC_INNER_PRODUCT)
    assert mem.qualified_ids(hits) == [[union_ids[i] for i in row] for row in r]
    np.testing.assert_allclose(hits.scores, s, rtol=1e-5, atol=1e-6)
    assert set(np.unique(hits.memory)) == {0, 1, 2}
    # a chosen subset of memories searches only those
    sub = mem.search(q, 5, memories=["n"])
    assert (sub.memory == 1).all()
    np.testing.assert_array_equal(sub.rows, faiss.knn(q, parts["news"], 5, metric=faiss.METRIC_INNER_PRODUCT)[1])
    assert split_id("aug:d1:x") == ("aug", "d1:x")


def test_fewer_documents_than_k(corpora):
    parts, paths, q = corpora
    mem = Memories(
        [
            Memory("a", build_index(parts["news"][:3], "Flat"), ["x", "y", "z"]),
            Memory("b", build_index(parts["news"][3:5], "Flat"), ["x", "y"]),
        ]
    )
    hits = mem.search(q, 10)
    assert [len(ids) for ids in mem.qualified_ids(hits)] == [5] * len(q)
    assert (hits.rows[:, 5:] == -1).all() and (hits.memory[:, 5:] == -1).all()


def test_errors(corpora, tmp_path):
    parts, paths, _ = corpora
    flat = build_index(parts["wiki"], "Flat")
    ids = [str(i) for i in range(300)]
    with pytest.raises(ValueError, match="repeated: wiki"):
        Memories.load([str(paths["wiki"]), str(paths["wiki"])])
    with pytest.raises(ValueError, match="d=8.*encode both with one model"):
        Memories([Memory("a", flat, ids), Memory("b", build_index(parts["wiki"][:, :8].copy(), "Flat"), ids)])
    with pytest.raises(ValueError, match=r"\(l2, d=16\) cannot be merged"):
        Memories([Memory("a", flat, ids), Memory("b", build_index(parts["wiki"], "Flat", metric="l2"), ids)])
    with pytest.raises(ValueError, match="300 vectors but there are 2 doc ids"):
        Memory("a", flat, ["x", "y"])
    with pytest.raises(ValueError, match="free of ':'"):
        Memory("a:b", flat, ids)
    with pytest.raises(ValueError, match="unknown memory 'x'"):
        Memories([Memory("a", flat, ids)]).search(parts["wiki"][:2], 3, memories=["x"])
    with pytest.raises(ValueError, match="memory a: cannot set nprobe"):
        Memories([Memory("a", flat, ids)]).search(parts["wiki"][:2], 3, nprobe=4)
    with pytest.raises(ValueError, match="not a memory-qualified id"):
        split_id("d1")


def test_cli_search_several_memories(tiny, tmp_path, capsys):  # noqa: F811
    model, ds = tiny
    emb = tmp_path / "emb"
    assert (
        main(
            [
                "encode",
                "--model",
                str(model),
                "--input",
                str(ds / "corpus.jsonl"),
                "--output",
                str(emb),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    assert main(["index", "--embeddings", str(emb), "--output", str(tmp_path / "a.faiss")]) == 0
    assert (
        main(["index", "--embeddings", str(emb), "--spann", "--list-size", "2", "--output", str(tmp_path / "b.spann")])
        == 0
    )
    assert "SPANN" in capsys.readouterr().out
    run = tmp_path / "run.trec"
    assert (
        main(
            [
                "search",
                "--model",
                str(model),
                "--index",
                str(tmp_path / "a.faiss"),
                "--index",
                f"second={tmp_path / 'b.spann'}",
                "--max-probe",
                "4",
                "--queries",
                str(ds / "queries.jsonl"),
                "--top-k",
                "6",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    got = read_trec_run(run)
    # the same three docs in both memories: each doc twice, with equal scores, under both names
    for docs in got.values():
        assert sorted(docs) == sorted(f"{m}:{d}" for m in ("a", "second") for d in ("d1", "d2", "d3"))
        assert all(abs(docs[f"a:{d}"] - docs[f"second:{d}"]) < 1e-5 for d in ("d1", "d2", "d3"))
    # a single memory keeps plain doc ids
    assert (
        main(
            [
                "search",
                "--model",
                str(model),
                "--index",
                str(tmp_path / "b.spann"),
                "--queries",
                str(ds / "queries.jsonl"),
                "--top-k",
                "2",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert all(set(d) <= {"d1", "d2", "d3"} and len(d) == 2 for d in read_trec_run(run).values())
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                "--model",
                str(model),
                "--index",
                str(tmp_path / "a.faiss"),
                "--index",
                str(tmp_path / "a.faiss"),
                "--queries",
                str(ds / "queries.jsonl"),
                "--output",
                str(run),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "repeated: a" in err
