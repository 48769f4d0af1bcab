"""BEIR dataset reader: corpus.jsonl, queries.jsonl, qrels/<split>.tsv, and finding a dataset by name."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from jdr.data.lines import jsonl_records, text_lines
from jdr.errors import DataError
from jdr.io import atomic_dir

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
QRELS_HEADER = ["query-id", "corpus-id", "score"]


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Documents in file order. `index` maps a doc id to its row (the row of its embedding)."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    index: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)

    def passage(self, i: int) -> str:
        """Row `i` as the model sees it: BEIR's `(title + " " + text).strip()`."""
        return (self.titles[i] + " " + self.texts[i]).strip()

    def passages(self) -> list[str]:
        """All rows joined as in `passage`, in row order."""
        return [self.passage(i) for i in range(len(self.ids))]

    def passage_view(self) -> PassageView:
        """The rows joined as in `passage`, computed on access: a sequence for tokenising a big corpus in chunks
        without a second copy of every text."""
        return PassageView(self)


class PassageView(Sequence[str]):
    """Read-only sequence of `corpus.passage(i)`; a slice is a list of joined passages."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.corpus.passage(j) for j in range(*i.indices(len(self)))]
        return self.corpus.passage(range(len(self))[i])


@dataclasses.dataclass(frozen=True)
class BeirData:
    """One split of a BEIR dataset. `queries` holds only the queries judged in `qrels` (as BEIR does)."""

    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _record_id(path: Path, line_no: int, rec: dict, seen) -> str:
    rid = rec.get("_id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)  # some BEIR exports write numeric ids
    if not isinstance(rid, str) or not rid.strip():
        raise DataError(path, "missing or empty '_id'", line_no)
    if rid in seen:
        raise DataError(path, f"duplicate id {rid!r}", line_no)
    return rid


def _string_field(path: Path, line_no: int, rec: dict, key: str, required: bool) -> str:
    value = rec.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise DataError(path, f"field {key!r} is {what}", line_no)
    return value


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Read a BEIR corpus.jsonl (`_id`, optional `title`, `text`) into a `Corpus` in file order."""
    path = Path(path)
    ids, titles, texts, index = [], [], [], {}
    for line_no, rec in jsonl_records(path):
        did = _record_id(path, line_no, rec, index)
        titles.append(_string_field(path, line_no, rec, "title", required=False))
        texts.append(_string_field(path, line_no, rec, "text", required=True))
        index[did] = len(ids)
        ids.append(did)
    if not ids:
        raise DataError(path, "corpus is empty")
    return Corpus(ids=ids, titles=titles, texts=texts, index=index)


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read a BEIR queries.jsonl (`_id`, `text`) into `{qid: text}` in file order."""
    path = Path(path)
    queries: dict[str, str] = {}
    for line_no, rec in jsonl_records(path):
        qid = _record_id(path, line_no, rec, queries)
        queries[qid] = _string_field(path, line_no, rec, "text", required=True)
    if not queries:
        raise DataError(path, "no queries")
    return queries


def load_qrels(path: str | os.PathLike, corpus_ids=None, query_ids=None) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (`query-id corpus-id score`, header optional) into `{qid: {docid: score}}`.

    `corpus_ids` / `query_ids` (any container supporting `in`), when given, must contain every id named.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if line_no == 1 and cols == QRELS_HEADER:
            continue
        if len(cols) != 3:
            raise DataError(
                path, f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}", line_no
            )
        qid, did, score = cols
        add_judgment(qrels, path, line_no, qid, did, score, corpus_ids, query_ids)
    if not qrels:
        raise DataError(path, "no judgments")
    return qrels


def add_judgment(
    qrels: dict,
    path,
    line_no: int,
    qid: str,
    did: str,
    score: str,
    corpus_ids,
    query_ids,
    *,
    score_name: str = "score",
    doc_name: str = "doc",
    corpus_name: str = "corpus",
) -> None:
    """Validate one qrels row (integer score, known query and doc ids) and add it to `qrels` — shared by the
    BEIR and MS MARCO readers so both report bad rows the same way."""
    try:
        rel = int(score)
    except ValueError:
        raise DataError(path, f"{score_name} {score!r} is not an integer", line_no) from None
    if query_ids is not None and qid not in query_ids:
        raise DataError(path, f"query id {qid!r} is not in the queries file", line_no)
    if corpus_ids is not None and did not in corpus_ids:
        raise DataError(path, f"{doc_name} id {did!r} is not in the {corpus_name}", line_no)
    qrels.setdefault(qid, {})[did] = rel


def available_splits(data_dir: str | os.PathLike) -> list[str]:
    """The qrels splits present in a BEIR dir (names of `qrels/*.tsv`), sorted."""
    return sorted(p.stem for p in (Path(data_dir) / "qrels").glob("*.tsv"))


def load_beir(data_dir: str | os.PathLike, split: str = "test") -> BeirData:
    """Load one split of a BEIR dataset dir; queries are restricted to those judged in the split."""
    data_dir = Path(data_dir)
    qrels_path = data_dir / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = ", ".join(available_splits(data_dir)) or "none"
        raise DataError(qrels_path, f"no split {split!r} (splits present: {have})")
    corpus = load_corpus(data_dir / "corpus.jsonl")
    queries = load_queries(data_dir / "queries.jsonl")
    qrels = load_qrels(qrels_path, corpus.index, queries)
    return BeirData(corpus=corpus, queries={q: queries[q] for q in qrels}, qrels=qrels)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where downloaded BEIR datasets are kept: `~/.cache/jdr/beir`."""
    return Path.home() / ".cache" / "jdr" / "beir"


def _download(url: str, dest: Path) -> None:
    """Fetch `url` into the file `dest` (tests replace this to stay off the network)."""
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def _download_beir(name: str, target: Path) -> None:
    """Download and unzip BEIR `name` so that `target/corpus.jsonl` exists; nothing is left behind on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.zip.") as tmp:
        zip_path = Path(tmp) / f"{name}.zip"
        _download(BEIR_URL.format(name=name), zip_path)
        with atomic_dir(target) as out, zipfile.ZipFile(zip_path) as zf:
            zf.extractall(out)
            inner = out / name  # BEIR zips hold one top-level folder named after the dataset
            if inner.is_dir():
                for child in inner.iterdir():
                    child.rename(out / child.name)
                inner.rmdir()
            if not (out / "corpus.jsonl").is_file():
                raise DataError(zip_path, "archive has no corpus.jsonl")


def resolve_dataset(name_or_dir: str | os.PathLike) -> Path:
    """Find a BEIR dataset: an existing dir, else `$JDR_DATA/<name>`, `<repo>/../shared/data/<name>`, the cache,
    then a download of the public BEIR zip into the cache. Raises DataError listing every place tried."""
    p = Path(name_or_dir)
    if p.is_dir():
        return p
    name = str(name_or_dir)
    if os.sep in name or name.startswith("."):
        raise DataError(p, "no such dataset directory")
    places = []
    if os.environ.get("JDR_DATA"):
        places.append(Path(os.environ["JDR_DATA"]) / name)
    places += [_repo_root().parent / "shared" / "data" / name, cache_dir() / name]
    for place in places:
        if (place / "corpus.jsonl").is_file():
            return place
    url = BEIR_URL.format(name=name)
    try:
        _download_beir(name, cache_dir() / name)
    except Exception as e:  # any network / zip failure becomes the one-line "looked here" error
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        looked = ", ".join(str(x) for x in places)
        raise DataError(name, f"dataset not found (looked in {looked}; download {url} failed: {reason})") from None
    return cache_dir() / name
