"""`memory` negatives (MoMA): mining over a mixture of memories equals brute force over the union, positives are
never mined, table rows past the corpus round-trip, config errors are one line, and the trainer runs on them."""

import json
from pathlib import Path

import numpy as np
import pytest

from jdr.config import ConfigError, load_config
from jdr.data.beir import Corpus
from jdr.index import Memories, Memory, build_index, build_spann, save_index
from jdr.index.memories import ids_path
from jdr.index.store import save_embeddings
from jdr.negatives import NegativesTable, build_table
from jdr.negatives.memory import MemoryNegatives, parse_mix
from jdr.negatives.refresh import AnnRefreshConfig, ann_build_fn
from jdr.negatives.table import positives_csr

D = 16
REPO = Path(__file__).resolve().parents[1]


def _unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q, parts, exclude, quotas):
    """Reference: per memory the exact inner products with excluded rows dropped, each memory's top quota (all
    for merged), then one ranking by score -> per query [(memory, row), ...] best first."""
    out = []
    for i in range(len(q)):
        cands = []
        for m, (name, x) in enumerate(parts):
            s = x @ q[i]
            ranked = [r for r in np.argsort(-s, kind="stable") if r not in exclude.get(name, [set()] * len(q))[i]]
            cands += [(s[r], m, r) for r in ranked[: quotas.get(name, 0)]]
        cands.sort(key=lambda c: -c[0])
        out.append([(m, int(r)) for _, m, r in cands])
    return out


def _csr(lists):
    offsets = np.cumsum([0] + [len(x) for x in lists])
    return offsets, np.asarray([r for x in lists for r in sorted(x)], np.int64)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """Memories a (faiss Flat), b (faiss IVF, every list probed) and c (SPANN, every list probed) + queries."""
    tmp = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(1)
    parts = [("a", _unit(rng, 120)), ("b", _unit(rng, 90)), ("c", _unit(rng, 200))]
    spann = build_spann(parts[2][1], tmp / "c.spann", list_size=30, eps1=0.1, max_replicas=2)
    ids_path(tmp / "c.spann").write_text("".join(f"c{i}\n" for i in range(200)))
    memories = Memories(
        [
            Memory("a", build_index(parts[0][1]), [f"a{i}" for i in range(120)]),
            Memory("b", build_index(parts[1][1], "IVF4,Flat"), [f"b{i}" for i in range(90)]).with_probe(4),
            Memory.load(f"c={tmp / 'c.spann'}").with_probe(spann.meta["heads"]),
        ]
    )
    return memories, parts, _unit(rng, 12)


@pytest.mark.parametrize("mix", [None, {"a": 7, "c": 5}, {"a": 3, "b": 4, "c": 6}], ids=["merged", "a+c", "abc"])
def test_mining_equals_brute_force_over_the_union(mixture, mix):
    memories, parts, q = mixture
    depth = 15
    # exclude each query's own nearest rows of a and c (as positives would be): they must not come back
    exclude = {
        name: [set(np.argsort(-(x @ q[i]))[: 1 + i % 3].tolist()) for i in range(len(q))]
        for name, x in parts
        if name != "b"
    }
    hits = memories.mine(q, depth=depth, mix=mix, exclude={k: _csr(v) for k, v in exclude.items()})
    quotas = {name: depth for name, _ in parts} if mix is None else mix
    expected = _brute(q, parts, exclude, quotas)
    if mix is None:
        expected = [e[:depth] for e in expected]
    got = [[(int(m), int(r)) for m, r in zip(mr, rr) if r >= 0] for mr, rr in zip(hits.memory, hits.rows)]
    assert got == expected
    assert hits.rows.shape[1] == (depth if mix is None else sum(mix.values()))
    for i, row in enumerate(got):  # positives never mined, and lists stay full however many were excluded
        assert not [r for m, r in row if parts[m][0] in exclude and r in exclude[parts[m][0]][i]]
        assert len(row) == hits.rows.shape[1]
    per = {parts[m][0]: sum(1 for mm, _ in got[0] if mm == m) for m in range(3)}
    assert mix is None or per == {name: mix.get(name, 0) for name, _ in parts}


def test_mine_errors(mixture):
    memories, _, q = mixture
    with pytest.raises(ValueError, match="unknown memory 'z'"):
        memories.mine(q, depth=5, mix={"z": 3})
    with pytest.raises(ValueError, match="not all 0"):
        memories.mine(q, depth=5, mix={"a": 0})
    with pytest.raises(ValueError, match=r"offsets must be \[13\]"):
        memories.mine(q, depth=5, exclude={"a": (np.zeros(3, np.int64), np.zeros(0, np.int64))})
    assert parse_mix("merged") is None and parse_mix("train:100, wiki:50") == {"train": 100, "wiki": 50}
    for bad in ("train", "train:x", "a:1,a:2", "a:0"):
        with pytest.raises(ValueError, match="negatives.memory_mix"):
            parse_mix(bad)


@pytest.fixture(scope="module")
def toy():
    """A 40-doc training corpus (embeddings), 10 queries with positives, an augmentation memory of 30 docs."""
    rng = np.random.default_rng(2)
    ids = [f"d{i}" for i in range(40)]
    corpus = Corpus(ids, [""] * 40, [f"text {i}" for i in range(40)], {d: i for i, d in enumerate(ids)})
    p_emb, aug, q_emb = _unit(rng, 40), _unit(rng, 30), _unit(rng, 10)
    qids = [f"q{i}" for i in range(10)]
    qrels = {q: {f"d{i}": 1, f"d{(i + 7) % 40}": int(i % 2)} for i, q in enumerate(qids)}
    q_emb[:4] = p_emb[:4]  # these queries' nearest document is their positive: exclusion must drop it
    memory = MemoryNegatives(
        ids, [Memory.from_arrays("aug", aug, [f"x{i}" for i in range(30)])], corpus_index=corpus.index
    )
    return corpus, qids, qrels, p_emb, aug, q_emb, memory


def test_memory_rows_and_ids_follow_the_corpus(toy):
    corpus, qids, qrels, p_emb, aug, q_emb, memory = toy
    offsets, pos = positives_csr(qids, qrels, corpus.index)
    scores, rows = memory.mine(q_emb, p_emb, 12, offsets, pos)
    union = np.concatenate([p_emb, aug])
    for i, q in enumerate(qids):
        own = set(pos[offsets[i] : offsets[i + 1]].tolist())
        s = union @ q_emb[i]
        expected = [r for r in np.argsort(-s, kind="stable") if r not in own][:12]
        assert rows[i].tolist() == expected
        np.testing.assert_allclose(scores[i], s[expected], rtol=1e-5)
    assert (rows >= 40).any() and (rows < 40).any()
    table = build_table(
        {"memory": 2, "random": 1}, corpus, {}, qrels, qids, depth=12, query_emb=q_emb, passage_emb=p_emb, memory=memory
    )
    assert table.memory_ids == tuple(f"aug:x{i}" for i in range(30))
    ranked = table.ranked("q0", "memory")
    assert ranked == [corpus.ids[r] if r < 40 else f"aug:x{r - 40}" for r in rows[0][: len(ranked)].tolist()]
    drawn = [d for s in range(40) for d in table.sample("q1", np.random.default_rng(s))]
    assert any(d.startswith("aug:") for d in drawn) and not set(drawn) & {"d1"}
    # the checkpoint form is integers only, and needs the same memory documents back
    arrays = table.to_arrays()
    assert all(np.asarray(v).dtype.kind in "iu" for v in arrays.values() if not isinstance(v, dict))
    back = NegativesTable.from_arrays(arrays, corpus.ids, qrels, table.memory_ids)
    for s in range(5):
        assert back.sample("q3", np.random.default_rng(s)) == table.sample("q3", np.random.default_rng(s))
    with pytest.raises(ValueError, match="other negatives.memories"):
        NegativesTable.from_arrays(arrays, corpus.ids, qrels, table.memory_ids[:-1] + ("aug:zz",))
    with pytest.raises(ValueError, match="other negatives.memories"):
        NegativesTable.from_arrays(arrays, corpus.ids, qrels)
    old = dict(arrays, meta=arrays["meta"][:4], candidates={})  # a table saved before memories existed
    assert NegativesTable.from_arrays(dict(old, counts={"random": np.int64(1)}), corpus.ids, qrels).memory_ids == ()


def test_refresh_re_mines_the_corpus_and_keeps_the_augmentation_memory(toy):
    corpus, qids, qrels, p_emb, aug, q_emb, memory = toy
    table = build_table(
        {"memory": 2}, corpus, {}, qrels, qids, depth=12, query_emb=q_emb, passage_emb=p_emb, memory=memory
    )
    moved = _unit(np.random.default_rng(3), 40)  # the corpus re-encoded by a later model
    cfg = AnnRefreshConfig(depth=12, counts={"memory": 2}, refresh_fraction=0.5)
    build = ann_build_fn(
        lambda params: moved,
        lambda params, sel: q_emb[[qids.index(q) for q in sel]],
        corpus,
        qids,
        qrels,
        cfg,
        initial=table,
        memory=memory,
    )
    new = build(None, 4)
    offsets, pos = positives_csr(qids, qrels, corpus.index)
    _, expected = memory.mine(q_emb, moved, 12, offsets, pos)
    changed = [i for i in range(10) if new.candidates["memory"][i].tolist() != table.candidates["memory"][i].tolist()]
    assert changed  # the half re-mined this round equals mining with the new corpus embeddings; the rest kept theirs
    part = np.random.default_rng(0).permutation(10) % 2 == 0
    for i in range(10):
        want = expected[i] if part[i] else table.candidates["memory"][i]
        assert new.candidates["memory"][i][:12].tolist() == np.asarray(want)[:12].tolist()
    assert new.memory_ids == table.memory_ids and new.version == 1
    assert (new.candidates["memory"] >= 40).any()  # augmentation documents still mined, from the fixed index


# -- the trainer -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_files(tiny_model, tmp_path_factory):
    """Two augmentation memories in the toy BEIR topics, encoded with the tiny model: `aug` an embedding store
    (`jdr encode`), `idx` a faiss index (`jdr index`) over another store; each with its corpus.jsonl."""
    from jdr.cli import main

    tmp = tmp_path_factory.mktemp("memories")
    topics = ["cancer tumor", "virus infection", "brain blood", "gene dna", "immune response", "drug therapy"]
    paths = {}
    for name, n in (("aug", 24), ("idx", 12)):
        corpus = tmp / name / "corpus.jsonl"
        corpus.parent.mkdir()
        corpus.write_text(
            "".join(
                json.dumps(
                    {"_id": f"{name}{i}", "title": topics[i % 6], "text": f"{topics[(i + 1) % 6]} study number {i}"}
                )
                + "\n"
                for i in range(n)
            )
        )
        store = tmp / name / "store"
        assert main(["encode", "--model", str(tiny_model), "--input", str(corpus), "--output", str(store)]) == 0
        paths[name] = (store, corpus)
    assert main(["index", "--embeddings", str(paths["idx"][0]), "--output", str(tmp / "idx.faiss")]) == 0
    paths["idx"] = (tmp / "idx.faiss", paths["idx"][1])
    return paths


def _cfg(tiny_model, toy_beir, memory_files, *overrides):
    memories = ";".join(f"{n}={i},{c}" for n, (i, c) in memory_files.items())
    return load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={toy_beir}",
            "negatives.source=memory",
            "negatives.num=2",
            f"negatives.memories={memories}",
            *overrides,
        ],
    )


def test_training_on_memory_negatives_resumes_bit_identically(
    tiny_model, toy_beir, memory_files, tmp_path, monkeypatch
):
    import jax

    from jdr.data.labeled import LabeledSource
    from jdr.models.workdir import load_workdir
    from jdr.train.trainer import train

    over = [
        "negatives.memory_mix=train:4,aug:4,idx:2",
        "negatives.refresh_every=4",
        "train.steps=8",
        "checkpoint.every=4",
        "eval.every=0",
        "eval.final_test=false",
        "export.at_end=false",
        "log.every=1",
    ]
    keys = []
    original = LabeledSource.next_batch

    def recording(self):
        batch = original(self)
        keys.extend(k for ex in batch for k in ex.passage_keys[1:])
        return batch

    monkeypatch.setattr(LabeledSource, "next_batch", recording)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    final = train(_cfg(tiny_model, toy_beir, memory_files, *over), straight, progress=False)
    assert [r["version"] for r in final["negatives/refreshes"]] == [1]
    # the batches' negatives come from the training corpus and from both augmentation memories
    assert {k.split(":")[0] for k in keys if ":" in k} == {"aug", "idx"} and any(":" not in k for k in keys)
    monkeypatch.setattr(LabeledSource, "next_batch", original)
    assert train(_cfg(tiny_model, toy_beir, memory_files, *over), resumed, progress=False, stop_at=6)["stopped"]
    tables = []
    set_table = LabeledSource.set_table
    monkeypatch.setattr(LabeledSource, "set_table", lambda self, t: (tables.append(t), set_table(self, t)))
    train(_cfg(tiny_model, toy_beir, memory_files, *over), resumed, progress=False)
    a, b = (jax.tree_util.tree_leaves(load_workdir(w)[0]) for w in (straight, resumed))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    logged = [
        [json.loads(x).get("train/loss") for x in (w / "metrics.jsonl").read_text().splitlines()]
        for w in (straight, resumed)
    ]
    assert [v for v in logged[0] if v is not None] == [v for v in logged[1] if v is not None]
    # the step-4 checkpoint gave back the refreshed table, memory rows and all
    restored = tables[0]
    assert restored.version == 1 and len(restored.memory_ids) == 36
    assert (restored.candidates["memory"] >= len(restored.corpus_ids)).any()


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"memories": "aug=/nowhere/aug.faiss,{aug_corpus}"}, r"negatives.memories: aug: /nowhere/aug.faiss: no such"),
        ({"memories": "aug={aug_store},/nowhere/corpus.jsonl"}, r"aug: /nowhere/corpus.jsonl: no such corpus file"),
        ({"memories": "aug={aug_store}"}, r"bad entry 'aug=.*'; expected 'name=INDEX_OR_STORE,CORPUS'"),
        ({"memories": "train={aug_store},{aug_corpus}"}, r"memory name 'train' must be unique"),
        ({"memories": "aug={narrow},{aug_corpus}"}, r"aug holds 8-dim vectors but the model embeds to 32"),
        ({"memories": "aug={l2},{aug_corpus}"}, r"aug ranks by l2, the model scores by inner product"),
        ({"memories": "aug={aug_store},{short_corpus}"}, r"doc id 'aug23' of .*ids.txt is not in .*short.jsonl"),
        ({"memory_mix": "train:4,wiki:2"}, r"negatives.memory_mix: unknown memory 'wiki'; memories are train, aug"),
        ({"memory_mix": "train:8,aug:8"}, r"quotas sum to 16, more than negatives.depth=10"),
        ({"source": "random"}, r"negatives.memories is set but no negatives come from them"),
        ({"memories": ""}, r"negatives source 'memory' needs negatives.memories"),
    ],
)
def test_config_errors_are_one_line_before_anything_is_encoded(
    tiny_model, toy_beir, memory_files, tmp_path, change, pattern
):
    from jdr.train.trainer import prepare

    store, corpus = memory_files["aug"]
    rng = np.random.default_rng(0)
    ids = [f"aug{i}" for i in range(24)]
    save_embeddings(tmp_path / "narrow", _unit(rng, 24, 8), ids)
    save_index(build_index(_unit(rng, 24, 32), metric="l2"), tmp_path / "l2.faiss")
    ids_path(tmp_path / "l2.faiss").write_text("".join(f"{i}\n" for i in ids))
    (tmp_path / "short.jsonl").write_text("".join(corpus.read_text().splitlines(True)[:-1]))
    paths = dict(
        aug_store=store,
        aug_corpus=corpus,
        narrow=tmp_path / "narrow",
        l2=tmp_path / "l2.faiss",
        short_corpus=tmp_path / "short.jsonl",
    )
    settings = {"source": "memory", "memories": "aug={aug_store},{aug_corpus}", **change}
    cfg = load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={toy_beir}",
            *(f"negatives.{k}={v.format(**paths)}" for k, v in settings.items()),
        ],
    )
    with pytest.raises(ConfigError, match=pattern) as e:
        prepare(cfg, tmp_path / "w")
    assert "\n" not in str(e.value)


def test_experiment_split_and_rows(toy_beir, tmp_path):
    """benchmarks/memory_negatives.py: the augmentation part is disjoint from the training part, which keeps every
    training positive; the rows differ only in their negatives (and `full` in its corpus)."""
    import importlib.util

    from jdr.config import to_dict
    from jdr.data.beir import load_beir, load_corpus

    path = REPO / "benchmarks" / "memory_negatives.py"
    spec = importlib.util.spec_from_file_location("memory_negatives", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = module.split_corpus(toy_beir, tmp_path / "train", tmp_path / "aug", fraction=0.5, seed=0)
    whole, part = load_beir(toy_beir, "train"), load_beir(tmp_path / "train", "train")
    aug = load_corpus(tmp_path / "aug" / "corpus.jsonl")
    assert not set(part.corpus.ids) & set(aug.ids) and len(part.corpus) + len(aug) == len(whole.corpus)
    assert {d for rels in whole.qrels.values() for d in rels} <= set(part.corpus.ids) and part.qrels == whole.qrels
    assert counts["aug"] == len(aug) > 0
    rows = {
        r: to_dict(load_config(REPO / "configs" / "memory_exp" / f"{r}.py"))
        for r in ("half", "merged", "quota", "full")
    }

    def rest(cfg):
        cfg = json.loads(json.dumps(cfg))
        cfg.pop("negatives")
        cfg["data"].pop("dataset")
        return cfg

    assert all(rest(c) == rest(rows["merged"]) and c["negatives"]["source"] == "memory" for c in rows.values())
    assert len({json.dumps(c["negatives"], sort_keys=True) for c in rows.values()}) == 3  # full shares half's mix
    assert rows["full"]["data"]["dataset"] == "scifact" != rows["half"]["data"]["dataset"]


def test_memory_probe_reaches_ivf_and_spann_memories(tiny_model, toy_beir, memory_files, tmp_path):
    from jdr.index.store import load_embeddings
    from jdr.train.memories import load_memories
    from jdr.train.sources import load_labeled

    emb, ids = load_embeddings(memory_files["aug"][0])
    save_index(build_index(emb, "IVF2,Flat"), tmp_path / "ivf.faiss")
    ids_path(tmp_path / "ivf.faiss").write_text("".join(f"{i}\n" for i in ids))
    build_spann(np.asarray(emb), tmp_path / "s.spann", list_size=8, eps1=0.1, max_replicas=2)
    ids_path(tmp_path / "s.spann").write_text("".join(f"{i}\n" for i in ids))
    corpus = memory_files["aug"][1]
    cfg = load_config(
        "configs/tiny.py",
        [
            f"data.dataset={toy_beir}",
            "negatives.source=memory",
            f"negatives.memories=ivf={tmp_path / 'ivf.faiss'},{corpus};s={tmp_path / 's.spann'},{corpus}",
            "negatives.memory_probe=3",
        ],
    )
    negatives, passages = load_memories(cfg, load_labeled("beir", cfg), 32)
    assert [m.defaults for m in negatives.augment] == [{"nprobe": 3}, {"max_probe": 3}]
    assert passages.ids[:2] == ["ivf:aug0", "ivf:aug1"] and len(passages.texts) == 48
    assert passages.texts[24] == passages.texts[0] and "study number 0" in passages.texts[0]
