"""Training sources on toy files: every reader (Tevatron JSONL, triplets JSONL/TSV, MS MARCO TSV, BEIR) and its
error lines, determinism, host sharding, resume from a JSON state, mixtures, and the config errors — all before
any compile (`prepare` loads the tiny model and the data, it compiles nothing)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from jdr.config import ConfigError, load_config
from jdr.data import msmarco
from jdr.data.batching import BatchBuilder
from jdr.data.beir import load_beir, load_corpus, load_qrels, load_queries
from jdr.data.mixture import split_rows
from jdr.data.tevatron import load_tevatron, write_tevatron
from jdr.data.triplets import load_triplets
from jdr.errors import DataError
from jdr.train.trainer import prepare, train


# -- toy files from the toy BEIR fixture ------------------------------------------------------------------------
def _negatives(data, qid, n=3):
    pos = set(d for d, r in data.qrels[qid].items() if r > 0)
    return [d for d in data.corpus.ids if d not in pos][int(qid[1:]) % 7 :: 5][:n]


def _passage(data, d):
    i = data.corpus.index[d]
    return {"docid": d, "title": data.corpus.titles[i], "text": data.corpus.texts[i]}


def write_files(beir_dir: Path, out: Path) -> dict[str, Path]:
    """The toy BEIR train split as Tevatron JSONL, triplets (.jsonl, .tsv) and MS MARCO TSVs."""
    data = load_beir(beir_dir, "train")
    out.mkdir(parents=True, exist_ok=True)
    qids = sorted(data.qrels)
    write_tevatron(
        out / "train.jsonl",
        (
            {
                "query_id": q,
                "query": data.queries[q],
                "positive_passages": [_passage(data, d) for d in data.qrels[q]],
                "negative_passages": [_passage(data, d) for d in _negatives(data, q)],
            }
            for q in qids
        ),
    )
    rows = [
        (data.queries[q], data.corpus.passage(data.corpus.index[p]), data.corpus.passage(data.corpus.index[n]))
        for q in qids
        for p in data.qrels[q]
        for n in _negatives(data, q, 2)
    ]
    (out / "triplets.jsonl").write_text(
        "".join(json.dumps({"anchor": a, "positive": p, "negative": n}) + "\n" for a, p, n in rows)
    )
    (out / "triplets.tsv").write_text("".join(f"{a}\t{p}\t{n}\n" for a, p, n in rows))
    (out / "collection.tsv").write_text(
        "".join(f"{d}\t{data.corpus.passage(i)}\n" for i, d in enumerate(data.corpus.ids))
    )
    (out / "queries.tsv").write_text("".join(f"{q}\t{data.queries[q]}\n" for q in qids))
    (out / "qrels.tsv").write_text("".join(f"{q} 0 {d} 1\n" for q in qids for d in data.qrels[q]))
    (out / "triples.tsv").write_text(
        "".join(f"{q}\t{p}\t{n}\n" for q in qids for p in data.qrels[q] for n in _negatives(data, q, 2))
    )
    return {
        k: out / k
        for k in (
            "train.jsonl",
            "triplets.jsonl",
            "triplets.tsv",
            "collection.tsv",
            "queries.tsv",
            "qrels.tsv",
            "triples.tsv",
        )
    }


@pytest.fixture(scope="module")
def files(toy_beir, tmp_path_factory):
    return write_files(toy_beir, tmp_path_factory.mktemp("sources"))


def source_overrides(kind, files, toy_beir):
    if kind == "beir":
        return ["data.source=beir", "negatives.source=random"]
    if kind == "jsonl":
        return ["data.source=jsonl", f"data.jsonl.path={files['train.jsonl']}", "negatives.source=file"]
    if kind in ("triplets.jsonl", "triplets.tsv"):
        return ["data.source=triplets", f"data.triplets.path={files[kind]}", "negatives.source=file"]
    if kind == "msmarco":
        return [
            "data.source=msmarco",
            f"data.msmarco.collection={files['collection.tsv']}",
            f"data.msmarco.queries={files['queries.tsv']}",
            f"data.msmarco.qrels={files['qrels.tsv']}",
            f"data.msmarco.triples={files['triples.tsv']}",
            "negatives.source=file",
        ]
    if kind == "mixture":
        return [
            "data.source=mixture",
            "negatives.source=file",
            f"data.mixture.members=jsonl:{files['train.jsonl']}:3;triplets:{files['triplets.tsv']}:1",
        ]
    raise AssertionError(kind)


def cfg_for(tiny_model, toy_beir, *overrides):
    return load_config(
        "configs/tiny.py",
        [f"model.path={tiny_model}", f"data.dataset={toy_beir}", "train.global_batch_size=8", *overrides],
    )


KINDS = ["beir", "jsonl", "triplets.jsonl", "triplets.tsv", "msmarco", "mixture"]


# -- readers ------------------------------------------------------------------------------------------------------
def test_tevatron_dedups_passages_and_merges_lines(files, tmp_path):
    data = load_tevatron(files["train.jsonl"])
    beir_data_ids = {
        p["docid"]
        for line in files["train.jsonl"].read_text().splitlines()
        for key in ("positive_passages", "negative_passages")
        for p in json.loads(line)[key]
    }
    assert sorted(data.corpus.ids) == sorted(beir_data_ids)  # each docid once, however often it appears
    assert len(data.queries) == 32 and all(len(v) == 1 for v in data.qrels.values())
    assert len(data.negatives) == 32 * 3
    first = json.loads(files["train.jsonl"].read_text().splitlines()[0])
    rows = data.negatives.ranked_rows([first["query_id"]])[0]
    assert [data.corpus.ids[r] for r in rows] == [p["docid"] for p in first["negative_passages"]]  # file order
    p = tmp_path / "two.jsonl"
    pos = {"docid": 7, "title": "", "text": "a"}
    p.write_text(
        json.dumps(
            {
                "query_id": 1,
                "query": "x",
                "positive_passages": [pos],
                "negative_passages": [{"docid": "8", "text": "b"}],
            }
        )
        + "\n"
        + json.dumps({"query_id": "1", "query": "x", "positive_passages": [{"docid": "9", "text": "c"}]})
        + "\n"
    )
    two = load_tevatron(p)
    assert two.qrels == {"1": {"7": 1, "9": 1}} and two.corpus.ids == ["7", "8", "9"]  # numeric ids as strings


def test_triplets_jsonl_and_tsv_agree(files):
    a, b = load_triplets(files["triplets.jsonl"]), load_triplets(files["triplets.tsv"])
    assert a.queries == b.queries and a.qrels == b.qrels and a.corpus.texts == b.corpus.texts
    assert len(a.queries) == 32 and len(a.negatives) == 32 * 2
    assert a.corpus.ids[0] == "p0" and next(iter(a.queries)) == "q0"


def test_msmarco_training_reads_triples_as_file_negatives(files):
    data = msmarco.load_msmarco_training(
        files["collection.tsv"], files["queries.tsv"], files["qrels.tsv"], files["triples.tsv"]
    )
    assert len(data.corpus) == 48 and len(data.qrels) == 32 and len(data.negatives) == 32 * 2


_POS = [{"docid": "d1", "text": "pos"}]
_LINE = {"query_id": "q1", "query": "query", "positive_passages": _POS}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"query_id": "q1", "query": "x", \n', "bad JSON"),
        (json.dumps({"query": "x", "positive_passages": _POS}), "'query_id'"),
        (json.dumps({"query_id": "q1", "positive_passages": _POS}), "'query'"),
        (json.dumps({"query_id": "q1", "query": "x"}), "'positive_passages' must be a list"),
        (json.dumps({**_LINE, "positive_passages": []}), "empty 'positive_passages'"),
        (json.dumps({**_LINE, "positive_passages": [{"docid": "d1"}]}), "positive_passages[0].text"),
        (json.dumps({**_LINE, "negative_passages": [{"docid": "d1", "text": "pos"}]}), "'d1' is also a positive"),
        (json.dumps({**_LINE, "query": "other"}), "different text"),
        ('["a"]', "JSON object"),
    ],
)
def test_tevatron_errors_name_file_and_line(tmp_path, text, fragment):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(_LINE) + "\n\n" + text + "\n")
    with pytest.raises(DataError) as e:
        load_tevatron(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3: ") and fragment in msg and "\n" not in msg


@pytest.mark.parametrize(
    "suffix, text, fragment",
    [
        (".jsonl", '{"query": "q", "positive": "p"}', "'negative'"),
        (".jsonl", '{"positive": "p", "negative": "n"}', "'query' (or 'anchor')"),
        (".jsonl", '{"query": "q", "positive": "p", "negative": "p"}', "same text as the positive"),
        (".jsonl", '{"query": "q", "positive": "", "negative": "n"}', "'positive'"),
        (".tsv", "q\tp", "expected 3 tab-separated columns"),
        (".tsv", "q\tp\tp", "same text as the positive"),
    ],
)
def test_triplets_errors_name_file_and_line(tmp_path, suffix, text, fragment):
    p = tmp_path / f"t{suffix}"
    good = '{"query": "a", "positive": "b", "negative": "c"}' if suffix == ".jsonl" else "a\tb\tc"
    p.write_text(f"{good}\n{text}\n")
    with pytest.raises(DataError) as e:
        load_triplets(p)
    assert str(e.value).startswith(f"{p}:2: ") and fragment in str(e.value)
    with pytest.raises(DataError, match=r"t\.csv: triplets must be \.jsonl or \.tsv"):
        load_triplets(tmp_path / "t.csv")


def _with_bad_byte(p: Path, good: str, bad: bytes) -> Path:
    p.write_bytes(good.encode() + bad)
    return p


BAD = b"caf\xe9\n"  # Latin-1 e-acute: not UTF-8


@pytest.mark.parametrize(
    "name, good, loader",
    [
        ("train.jsonl", json.dumps(_LINE) + "\n", load_tevatron),
        ("t.jsonl", '{"query": "a", "positive": "b", "negative": "c"}\n', load_triplets),
        ("t.tsv", "a\tb\tc\n", load_triplets),
        ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n', load_corpus),
        ("queries.jsonl", '{"_id": "q1", "text": "x"}\n', load_queries),
        ("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n", load_qrels),
        ("collection.tsv", "1\tx\n", msmarco.load_collection),
        ("queries.tsv", "1\tx\n", msmarco.load_queries_tsv),
        ("qrels.trec", "1 0 2 1\n", msmarco.load_qrels_trec),
        ("triples.tsv", "a\tb\tc\n", msmarco.load_triples),
    ],
)
def test_non_utf8_byte_names_file_line_and_byte(tmp_path, name, good, loader):
    p = _with_bad_byte(tmp_path / name, good, BAD)
    line = good.count("\n") + 1
    with pytest.raises(DataError) as e:
        loader(p)
    assert str(e.value) == f"{p}:{line}: not UTF-8: byte 0xe9 at byte 4 of the line"


# -- sources: determinism, sharding, resume -------------------------------------------------------------------
def _run(tiny_model, toy_beir, files, kind, tmp_path, *extra):
    return prepare(cfg_for(tiny_model, toy_beir, *source_overrides(kind, files, toy_beir), *extra), tmp_path / "w")


def _draw(source, n):
    return [source.next_batch() for _ in range(n)]


def _same_batches(a, b):
    for xa, xb in zip(a, b, strict=True):
        for ea, eb in zip(xa, xb, strict=True):
            assert ea.query_key == eb.query_key and ea.passage_keys == eb.passage_keys
            assert np.array_equal(ea.query, eb.query)
            assert all(np.array_equal(pa, pb) for pa, pb in zip(ea.passages, eb.passages, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_source_is_deterministic_resumable_and_shards_over_hosts(tiny_model, toy_beir, files, tmp_path, kind):
    run = _run(tiny_model, toy_beir, files, kind, tmp_path)
    source = run.source
    assert source.global_batch_size == 8 and source.group_size == 2
    steps = 3 * 8  # several epochs of the 28 training pairs: crosses epoch boundaries
    first = _draw(source, 5)
    state = json.loads(json.dumps(source.state()))  # the checkpoint stores it as JSON
    rest = _draw(source, steps - 5)
    again = _run(tiny_model, toy_beir, files, kind, tmp_path).source
    _same_batches(_draw(again, steps), first + rest)  # same config -> same stream
    resumed = _run(tiny_model, toy_beir, files, kind, tmp_path).source
    resumed.restore(state)  # mid-epoch (5 batches of 3 per epoch)
    _same_batches(_draw(resumed, steps - 5), rest)
    for batch in first + rest:
        assert all(len(ex.passages) == 2 for ex in batch)
        assert len({ex.query_key for ex in batch}) == 8 and len({ex.passage_keys[0] for ex in batch}) == 8
        for ex in batch:
            assert ex.passage_keys[0] in ex.relevant and not set(ex.passage_keys[1:]) & ex.relevant

    def build(p, n, devices):
        return BatchBuilder(
            query_max_length=16,
            passage_max_length=32,
            pad_token_id=0,
            local_device_count=devices,
            process_index=p,
            process_count=n,
        )

    for batch in first[:2] + rest[-2:]:
        whole = build(0, 1, 4)(batch)
        for hosts in (2, 4):
            parts = [build(p, hosts, 4 // hosts)(batch) for p in range(hosts)]
            for key, value in whole.items():
                flat = np.concatenate([x[key].reshape(-1, x[key].shape[-1]) for x in parts])
                np.testing.assert_array_equal(flat, value.reshape(-1, value.shape[-1]), err_msg=f"{kind} {key}")


def test_restore_refuses_another_source(tiny_model, toy_beir, files, tmp_path):
    jsonl = _run(tiny_model, toy_beir, files, "jsonl", tmp_path).source
    mixture = _run(tiny_model, toy_beir, files, "mixture", tmp_path).source
    with pytest.raises(ValueError, match="kind"):
        jsonl.restore(mixture.state())
    with pytest.raises(ValueError, match="seed=0, this iterator has 1"):
        _run(tiny_model, toy_beir, files, "jsonl", tmp_path, "seed=1").source.restore(jsonl.state())


# -- mixtures -----------------------------------------------------------------------------------------------------
def test_same_source_batches_follow_the_weights(tiny_model, toy_beir, files, tmp_path):
    mix = _run(tiny_model, toy_beir, files, "mixture", tmp_path).source
    n = 400
    members = []
    for _ in range(n):
        batch = mix.next_batch()
        prefixes = {k.split("/")[0] for ex in batch for k in (ex.query_key, *ex.passage_keys, *ex.relevant)}
        assert len(prefixes) == 1  # every batch from one member, every key namespaced by it
        members.append(prefixes.pop())
    counts = Counter(members)
    assert set(counts) == {"0.jsonl", "1.triplets"} and mix.counts == [counts["0.jsonl"], counts["1.triplets"]]
    # weights 3:1 -> each batch from the first member with p = 0.75; a two-sided binomial test at 1e-3
    assert stats.binomtest(counts["0.jsonl"], n, 0.75).pvalue > 1e-3
    assert mix.describe()["members"]["0.jsonl"]["weight"] == 3.0


def test_mixed_batches_split_rows_by_weight(tiny_model, toy_beir, files, tmp_path):
    mix = _run(tiny_model, toy_beir, files, "mixture", tmp_path, "data.mixture.same_source_batches=false").source
    for _ in range(6):
        keys = [ex.query_key.split("/")[0] for ex in mix.next_batch()]
        assert keys == ["0.jsonl"] * 6 + ["1.triplets"] * 2  # split_rows(8, [3, 1])
    assert split_rows(8, [3, 1]) == [6, 2]
    assert split_rows(3, [1, 1, 100]) == [1, 1, 1]  # every member keeps a row
    assert split_rows(10, [1, 2, 2]) == [2, 4, 4]
    with pytest.raises(ValueError, match="cannot hold 3"):
        split_rows(2, [1, 1, 1])


def test_mixture_keys_never_link_members(tiny_model, toy_beir, files, tmp_path):
    """The same docs under two members (beir + jsonl of the same data) must not mask each other."""
    over = [
        "data.source=mixture",
        "negatives.source=random",
        "data.mixture.same_source_batches=false",
        f"data.mixture.members=beir:{toy_beir}:1;jsonl:{files['train.jsonl']}:1",
    ]
    mix = prepare(cfg_for(tiny_model, toy_beir, *over), tmp_path / "w").source
    batch = mix.next_batch()
    mask = BatchBuilder(query_max_length=16, passage_max_length=32, pad_token_id=0, local_device_count=1)(batch)
    fn = mask["false_negatives"][0]
    assert fn[:4, 8:].sum() == 0 and fn[4:, :8].sum() == 0


# -- config errors: one line, before any compile, nothing written -------------------------------------------------
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (
            ["data.source=parquet"],
            "data.source must be one of beir, jsonl, triplets, msmarco, mixture, selfsup, got 'parquet'",
        ),
        (["data.source=jsonl"], "data.jsonl.path is empty"),
        (["data.source=triplets"], "data.triplets.path is empty"),
        (["data.source=msmarco"], "data.msmarco.collection is empty"),
        (["data.source=jsonl", "data.jsonl.path=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl: no such file"),
        (["data.source=mixture", "data.mixture.members=jsonl:a.jsonl"], "bad member 'jsonl:a.jsonl'"),
        (["data.source=mixture", "data.mixture.members=csv:a.csv:1"], "bad member 'csv:a.csv:1'"),
        (["data.source=mixture", "data.mixture.members=jsonl:a.jsonl:-1"], "bad member"),
        (["data.source=mixture", "data.mixture.members=;"], "data.mixture.members is empty"),
        (["negatives.source=file"], "source 'file' needs negatives that came with the training data"),
        (["negatives.source=hybrid", "negatives.hybrid=file:1,bm25:1", "negatives.num=2"], "source 'file' needs"),
    ],
)
def test_config_errors_are_one_line_before_compile(tiny_model, toy_beir, tmp_path, overrides, pattern):
    workdir = tmp_path / "w"
    with pytest.raises(ValueError) as e:
        train(cfg_for(tiny_model, toy_beir, *overrides), workdir, progress=False)
    assert pattern in str(e.value) and "\n" not in str(e.value)
    assert not workdir.exists()


def test_mixture_refuses_refresh(tiny_model, toy_beir, files, tmp_path):
    over = [*source_overrides("mixture", files, toy_beir), "negatives.refresh_every=2"]
    with pytest.raises(ConfigError, match="a mixture has several"):
        prepare(cfg_for(tiny_model, toy_beir, *over), tmp_path / "w")


def test_passage_view_tokenises_like_the_joined_list(files, tiny_model):
    from jdr.data.batching import PretokenizedTexts
    from jdr.models.tokenize import load_tokenizer

    corpus = load_tevatron(files["train.jsonl"]).corpus
    view = corpus.passage_view()
    assert len(view) == len(corpus) and view[2:5] == corpus.passages()[2:5] and view[-1] == corpus.passage(-1)
    tok = load_tokenizer(tiny_model)
    a = PretokenizedTexts.from_texts(tok, corpus.ids, view, 32, chunk=7)
    b = PretokenizedTexts.from_texts(tok, corpus.ids, corpus.passages(), 32)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)


def test_file_negatives_table_holds_only_what_it_can_sample(tiny_model, toy_beir, files, tmp_path):
    """3 file negatives a query: under depth 10 the table is not padded to 10 columns; under depth 1 it keeps
    depth + max positives (1) = 2 columns, not the whole list (MS MARCO's triples list ~1000 a query)."""
    wide = _run(tiny_model, toy_beir, files, "jsonl", tmp_path).source.table
    assert wide.candidates["file"].shape == (28, 3)
    narrow = _run(tiny_model, toy_beir, files, "jsonl", tmp_path, "negatives.depth=1").source.table
    assert narrow.candidates["file"].shape == (28, 2)
    q = narrow.qids[0]
    assert narrow.ranked(q, "file") == wide.ranked(q, "file")[:2]
