"""BEIR and MS MARCO readers: parsing, the BEIR join, every error path (file:line in the message), dataset lookup."""

import json
import zipfile

import pytest

from jdr.data import beir, msmarco
from jdr.data.beir import load_beir, load_corpus, load_qrels, load_queries, resolve_dataset
from jdr.errors import DataError

CORPUS = [
    {"_id": "d1", "title": "Title one", "text": "first text"},
    {"_id": "d2", "title": "", "text": "  second text "},
    {"_id": "d3", "text": "no title"},
]
QUERIES = [{"_id": "q1", "text": "query one"}, {"_id": "q2", "text": "query two"}, {"_id": "q3", "text": "unjudged"}]


def write_beir(
    root, corpus=CORPUS, queries=QUERIES, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n", split="test"
):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def test_load_beir_and_join(tmp_path):
    data = load_beir(write_beir(tmp_path / "ds"), "test")
    assert data.corpus.ids == ["d1", "d2", "d3"]
    assert data.corpus.index == {"d1": 0, "d2": 1, "d3": 2}
    assert data.corpus.passage(0) == "Title one first text"
    assert data.corpus.passage(1) == "second text"
    assert data.corpus.passages()[2] == "no title"
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    assert data.queries == {"q1": "query one", "q2": "query two"}  # unjudged q3 dropped, as BEIR does


def test_numeric_ids_become_strings(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"_id": 7, "title": "a", "text": "b"}\n')
    assert load_corpus(p).ids == ["7"]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ('{"_id": "a", "text": "x"}\n{bad json\n', 2, "bad JSON"),
        ('{"_id": "a", "text": "x"}\n\n{"text": "y"}\n', 3, "_id"),
        ('{"_id": "", "text": "x"}\n', 1, "_id"),
        ('{"_id": "a", "text": 5}\n', 1, "'text'"),
        ('{"_id": "a", "title": ["t"], "text": "x"}\n', 1, "'title'"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', 2, "duplicate id 'a'"),
        ('["not", "an", "object"]\n', 1, "JSON object"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, text, line, fragment):
    p = _write(tmp_path, "corpus.jsonl", text)
    with pytest.raises(DataError) as e:
        load_corpus(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}: ") and fragment in msg and "\n" not in msg


def test_empty_corpus(tmp_path):
    p = _write(tmp_path, "corpus.jsonl", "\n")
    with pytest.raises(DataError, match="corpus.jsonl: corpus is empty"):
        load_corpus(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_queries(tmp_path / "nope.jsonl")


def test_queries_errors(tmp_path):
    p = _write(tmp_path, "queries.jsonl", '{"_id": "q", "text": "a"}\n{"_id": "q", "text": "b"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:2: duplicate id 'q'"):
        load_queries(p)
    p = _write(tmp_path, "queries.jsonl", '{"_id": "q"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:1: field 'text' is missing"):
        load_queries(p)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3"),
        ("q1\td1\t1\tx\n", 1, "expected 3"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n", 3, "not an integer"),
        ("q1\td1\t1\nq1\tzzz\t1\n", 2, "doc id 'zzz' is not in the corpus"),
        ("q1\td1\t1\nqX\td1\t1\n", 2, "query id 'qX' is not in the queries file"),
    ],
)
def test_qrels_errors(tmp_path, text, line, fragment):
    p = _write(tmp_path, "test.tsv", text)
    with pytest.raises(DataError) as e:
        load_qrels(p, corpus_ids={"d1", "d2"}, query_ids={"q1"})
    assert str(e.value).startswith(f"{p}:{line}: ") and fragment in str(e.value)


def test_qrels_without_header_and_without_id_checks(tmp_path):
    p = _write(tmp_path, "q.tsv", "q1\tanything\t0\nq1\td2\t1\n")
    assert load_qrels(p) == {"q1": {"anything": 0, "d2": 1}}


def test_missing_split_lists_existing(tmp_path):
    root = write_beir(tmp_path / "ds", split="train")
    (root / "qrels" / "dev.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DataError) as e:
        load_beir(root, "test")
    assert "test.tsv" in str(e.value) and "splits present: dev, train" in str(e.value)


def test_beir_qrels_unknown_doc(tmp_path):
    root = write_beir(tmp_path / "ds", qrels="query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:2: doc id 'd9'"):
        load_beir(root)


# -- resolve_dataset --------------------------------------------------------------------------------------------
@pytest.fixture
def no_places(tmp_path, monkeypatch):
    """Point every lookup place at empty tmp dirs and forbid real downloads."""
    monkeypatch.setattr(beir, "_repo_root", lambda: tmp_path / "repo" / "main")
    monkeypatch.setattr(beir, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.delenv("JDR_DATA", raising=False)

    def offline(url, dest):
        raise OSError("network is unreachable")

    monkeypatch.setattr(beir, "_download", offline)
    return tmp_path


def test_resolve_existing_dir(tmp_path):
    root = write_beir(tmp_path / "anything")
    assert resolve_dataset(str(root)) == root


def test_resolve_order(no_places, monkeypatch):
    tmp = no_places
    shared = write_beir(tmp / "repo" / "shared" / "data" / "toy")
    assert resolve_dataset("toy") == shared
    env = write_beir(tmp / "env" / "toy")
    monkeypatch.setenv("JDR_DATA", str(tmp / "env"))
    assert resolve_dataset("toy") == env  # $JDR_DATA wins over ../shared/data


def test_resolve_failure_lists_places(no_places, monkeypatch):
    monkeypatch.setenv("JDR_DATA", str(no_places / "env"))
    with pytest.raises(DataError) as e:
        resolve_dataset("toy")
    msg = str(e.value)
    assert "\n" not in msg
    for place in (
        no_places / "env" / "toy",
        no_places / "repo" / "shared" / "data" / "toy",
        no_places / "cache" / "toy",
    ):
        assert str(place) in msg
    assert "toy.zip" in msg and "network is unreachable" in msg
    assert not (no_places / "cache" / "toy").exists()


def test_resolve_downloads_into_cache(no_places, monkeypatch):
    src = write_beir(no_places / "src" / "toy")
    urls = []

    def fake_download(url, dest):
        urls.append(url)
        with zipfile.ZipFile(dest, "w") as zf:
            for f in src.rglob("*"):
                if f.is_file():
                    zf.write(f, f"toy/{f.relative_to(src)}")

    monkeypatch.setattr(beir, "_download", fake_download)
    got = resolve_dataset("toy")
    assert got == no_places / "cache" / "toy" and urls == [beir.BEIR_URL.format(name="toy")]
    assert load_beir(got).qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    assert resolve_dataset("toy") == got and len(urls) == 1  # second call hits the cache


def test_real_scifact(scifact_dir):
    data = load_beir(scifact_dir, "test")
    assert len(data.corpus) == 5183 and len(data.queries) == 300


# -- MS MARCO ---------------------------------------------------------------------------------------------------
def test_msmarco_readers(tmp_path):
    coll = msmarco.load_collection(_write(tmp_path, "collection.tsv", "0\tfirst passage\n1\tsecond\n"))
    assert coll.ids == ["0", "1"] and coll.passage(0) == "first passage" and coll.index["1"] == 1
    queries = msmarco.load_queries_tsv(_write(tmp_path, "queries.tsv", "10\twhat is x\n11\twho\n"))
    assert queries == {"10": "what is x", "11": "who"}
    qrels = msmarco.load_qrels_trec(_write(tmp_path, "qrels.tsv", "10\t0\t1\t1\n11 0 0 1\n"), coll.index, queries)
    assert qrels == {"10": {"1": 1}, "11": {"0": 1}}
    assert msmarco.load_triples(_write(tmp_path, "t.tsv", "q\tpos\tneg\n")) == [("q", "pos", "neg")]
    ids = msmarco.load_id_triples(_write(tmp_path, "i.tsv", "10\t1\t0\n"), coll.index, queries)
    assert ids == [("10", "1", "0")]


@pytest.mark.parametrize(
    "reader, text, line, fragment",
    [
        (msmarco.load_collection, "0\ta\n1\n", 2, "expected 2"),
        (msmarco.load_collection, "0\ta\n0\tb\n", 2, "duplicate id '0'"),
        (msmarco.load_queries_tsv, "1\ta\tb\n", 1, "expected 2"),
        (msmarco.load_qrels_trec, "1 0 2 1\n1 0 2\n", 2, "expected 4"),
        (msmarco.load_qrels_trec, "1 0 2 yes\n", 1, "not an integer"),
        (msmarco.load_triples, "q\tp\tn\nq\tp\n", 2, "expected 3"),
        (msmarco.load_id_triples, "1\t2\t\n", 1, "empty column"),
    ],
)
def test_msmarco_errors(tmp_path, reader, text, line, fragment):
    p = _write(tmp_path, "f.tsv", text)
    with pytest.raises(DataError) as e:
        reader(p)
    assert str(e.value).startswith(f"{p}:{line}: ") and fragment in str(e.value)


def test_msmarco_unknown_ids(tmp_path):
    p = _write(tmp_path, "qrels.tsv", "1 0 2 1\n1 0 9 1\n")
    with pytest.raises(DataError, match=r"qrels.tsv:2: passage id '9'"):
        msmarco.load_qrels_trec(p, corpus_ids={"2"})
    p = _write(tmp_path, "ids.tsv", "1\t2\t3\n")
    with pytest.raises(DataError, match=r"ids.tsv:1: query id '1'"):
        msmarco.load_id_triples(p, query_ids={"5"})
