"""Labelled training data — queries, a corpus, relevance labels, and negatives that came with the data — and the
training source over it.

BEIR qrels, Tevatron JSONL, sentence-transformers triplets and MS MARCO training files all reduce to
`LabeledData`; `LabeledSource` turns it into global batches of `Example`s: a `GroupIterator` orders the
(query, positive) pairs and draws negatives from a `NegativesTable` (whose sources may include the data's own
`file` negatives), and pre-tokenised stores turn ids into token arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jdr.data.batching import PretokenizedTexts
from jdr.data.beir import Corpus
from jdr.data.groups import GroupIterator, NegativesSampler
from jdr.data.source import Example, TrainingSource, check_state


@dataclasses.dataclass(frozen=True)
class FileNegatives:
    """Ranked negatives that came with the data, compactly: query `qids[i]`'s negatives are corpus rows
    `rows[offsets[i]:offsets[i+1]]` in file order (int32; a 1 M-query file holds no Python list per query)."""

    qids: tuple[str, ...]
    offsets: np.ndarray  # [Q+1] int64
    rows: np.ndarray  # [N] int32

    @classmethod
    def from_lists(cls, lists: Mapping[str, Sequence[int]]) -> FileNegatives:
        """`{qid: [corpus row, ...]}` (ranked) -> CSR."""
        qids = tuple(lists)
        offsets = np.zeros(len(qids) + 1, dtype=np.int64)
        np.cumsum([len(lists[q]) for q in qids], out=offsets[1:])
        rows = np.fromiter((r for q in qids for r in lists[q]), dtype=np.int32, count=int(offsets[-1]))
        return cls(qids, offsets, rows)

    def ranked_rows(self, qids: Sequence[str], depth: int | None = None) -> np.ndarray:
        """`[len(qids), K]` int64 corpus rows (-1 padded) for the `negatives` source of a table; K = the longest
        list (capped at `depth`). A query without file negatives gets an empty (all -1) row."""
        index = {q: i for i, q in enumerate(self.qids)}
        counts = np.diff(self.offsets)
        width = int(counts.max(initial=0)) if depth is None else min(depth, int(counts.max(initial=0)))
        out = np.full((len(qids), max(width, 1)), -1, dtype=np.int64)
        for r, q in enumerate(qids):
            i = index.get(q)
            if i is not None:
                got = self.rows[self.offsets[i] : self.offsets[i + 1]][:width]
                out[r, : len(got)] = got
        return out

    def __len__(self) -> int:
        return len(self.rows)


@dataclasses.dataclass(frozen=True)
class LabeledData:
    """Queries, corpus and relevance labels: what every labelled training set reduces to.

    `corpus`: passages in row order (`Corpus`); `queries`: `{qid: text}`; `qrels`: `{qid: {docid: relevance}}`
    (positives are relevance > 0); `negatives`: the ranked negatives that came with the data (Tevatron's
    `negative_passages`, the negatives of triplets or MS MARCO triples), the table source named `file`, or
    None; `name`: where the data came from (messages, run records); `teacher`: teacher scores of the pairs
    (`jdr.data.teacher.TeacherScores`, read from scored JSONL for distillation) or None.
    """

    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    negatives: FileNegatives | None = None
    name: str = ""
    teacher: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passages": len(self.corpus),
            "queries": len(self.queries),
            "judged_queries": len(self.qrels),
            "file_negatives": 0 if self.negatives is None else len(self.negatives),
        }


class MemoryPassages(NamedTuple):
    """Passages a negatives table may name past the training corpus (augmentation memories' documents): row
    `len(corpus) + i` of the table is `ids[i]` (`"memory:docid"`) with text `texts[i]` (any sequence supporting
    `len` and slices, e.g. a view computing passages on access)."""

    ids: Sequence[str]
    texts: Sequence[str]


class _Concatenated(Sequence[str]):
    """Read-only `a + b` without copying either (slices are lists)."""

    def __init__(self, a: Sequence[str], b: Sequence[str]):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            n = len(self.a)
            return list(self.a[min(start, n) : min(stop, n)]) + list(self.b[max(start - n, 0) : max(stop - n, 0)])
        i = range(len(self))[i]
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]


class LabeledSource(TrainingSource):
    """Global batches of (query, positive, negatives) `Example`s over `LabeledData` (see the module docstring).

    `train_qids`: the queries trained on (the rest, e.g. a dev split, are never drawn); `table`: a negatives
    sampler (`jdr.negatives.table.NegativesTable`) or None for in-batch negatives only. Tokens come from
    pre-tokenised stores built here (`queries_tokens`, `passage_tokens`, kept for the ANCE refresh, which
    re-encodes `passage_tokens` rather than re-tokenising the corpus). `key_prefix` namespaces the keys (a
    mixture gives each member its own). Ordering, uniqueness in a batch and determinism are `GroupIterator`'s.
    `query_prefix` / `passage_prefix`: text put before every query / passage (the encoder's, `EncoderSpec`).
    `memory_passages`: documents of augmentation memories the table may sample (`memory` negatives), tokenised
    once here after the corpus; their keys are their `"memory:docid"` ids (`memory_ids`), never a corpus id.
    """

    def __init__(
        self,
        data: LabeledData,
        train_qids: Sequence[str],
        table: NegativesSampler | None,
        tokenizer,
        *,
        query_max_length: int,
        passage_max_length: int,
        global_batch_size: int,
        num_negatives: int,
        seed: int,
        key_prefix: str = "",
        memory_passages: MemoryPassages | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
    ):
        self.data = data
        self.train_qids = list(train_qids)
        self.train_qrels = {q: data.qrels[q] for q in self.train_qids}
        self.iterator = GroupIterator(
            self.train_qids,
            self.train_qrels,
            table,
            global_batch_size=global_batch_size,
            num_negatives=num_negatives,
            seed=seed,
        )
        self.global_batch_size = global_batch_size
        self.group_size = 1 + num_negatives
        self.key_prefix = key_prefix
        self.query_tokens = PretokenizedTexts.from_texts(
            tokenizer,
            self.train_qids,
            [data.queries[q] for q in self.train_qids],
            query_max_length,
            prefix=query_prefix,
        )
        ids, texts = data.corpus.ids, data.corpus.passage_view()
        self.memory_ids: tuple[str, ...] = ()
        if memory_passages is not None:
            self.memory_ids = tuple(memory_passages.ids)
            ids, texts = [*ids, *self.memory_ids], _Concatenated(texts, memory_passages.texts)
        self.passage_tokens = PretokenizedTexts.from_texts(
            tokenizer, ids, texts, passage_max_length, prefix=passage_prefix
        )

    @property
    def table(self) -> NegativesSampler | None:
        """The negatives table the next batches draw from."""
        return self.iterator.table

    def set_table(self, table: NegativesSampler) -> None:
        """Swap the negatives table (ANCE refresh): batches drawn after this call sample from `table`."""
        self.iterator.set_table(table)

    def next_batch(self) -> list[Example]:
        batch = next(self.iterator)
        q_rows = self.query_tokens.rows([g.query_id for g in batch.groups], "query")
        out = []
        for g, q_row in zip(batch.groups, q_rows):
            docs = (g.positive_id, *g.negative_ids)
            p_rows = self.passage_tokens.rows(docs, "doc")
            scores = None if self.data.teacher is None else self.data.teacher.of(g.query_id, docs)
            out.append(
                Example(
                    self.query_tokens.tokens_of(q_row),
                    tuple(self.passage_tokens.tokens_of(r) for r in p_rows),
                    self.key_prefix + g.query_id,
                    tuple(self.key_prefix + d for d in docs),
                    self.relevant(g.query_id),
                    scores,
                )
            )
        return out

    def relevant(self, qid: str) -> frozenset[str]:
        """The keys of `qid`'s positives (built per batch: a set per query of a 1 M-query file would cost ~200 MB)."""
        return frozenset(self.key_prefix + d for d, rel in self.train_qrels[qid].items() if rel > 0)

    def state(self) -> dict[str, Any]:
        return {"kind": "labeled", "name": self.data.name, **self.iterator.state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        check_state(state, {"kind": "labeled"}, "training source")
        self.iterator.restore({k: v for k, v in state.items() if k not in ("kind", "name")})

    def describe(self) -> dict[str, Any]:
        return {
            **self.data.describe(),
            "train_queries": len(self.train_qids),
            "train_pairs": len(self.iterator.pairs),
            "skipped_queries": self.iterator.skipped_queries,
            **({"memory_passages": len(self.memory_ids)} if self.memory_ids else {}),
        }


class CorpusBuilder:
    """Collects passages met while streaming a training file, each docid stored once (a 1 M-line file whose
    lines repeat popular passages holds one copy of each). `add` returns the passage's corpus row."""

    def __init__(self):
        self.ids: list[str] = []
        self.titles: list[str] = []
        self.texts: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, docid: str, title: str, text: str) -> int:
        """Row of `docid`, adding it on first sight (later copies are not stored; their text is not compared)."""
        row = self.index.get(docid)
        if row is None:
            row = self.index[docid] = len(self.ids)
            self.ids.append(docid)
            self.titles.append(title)
            self.texts.append(text)
        return row

    def corpus(self) -> Corpus:
        return Corpus(ids=self.ids, titles=self.titles, texts=self.texts, index=self.index)
