"""The fixed dense teacher of Distill-VQ (`jdr vq train / evaluate`): document and query embeddings of one BEIR
dataset, read from cached embedding stores or encoded with `data.model` (any model reference)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from jdr.data.beir import resolve_dataset
from jdr.errors import DataError

PSEUDO = ("none", "title", "doc")


class Teacher:
    """Teacher embeddings of one dataset: `doc_emb` [N, d] with `doc_ids` (index row order), and `queries(qids)`
    -> [len(qids), d] query-tower embeddings, read from `data.embeddings` or encoded on first use."""

    def __init__(self, cfg, data_dir: Path, workdir: Path | None = None):
        self.cfg, self.data_dir = cfg, data_dir
        self._store = Path(cfg.data.embeddings) if cfg.data.embeddings else None
        self._query_texts = None
        if self._store is not None:
            from jdr.index.store import load_embeddings

            emb, self.doc_ids = load_embeddings(self._store / "corpus", mmap=False)
            self.doc_emb = np.ascontiguousarray(emb, np.float32)
        elif workdir is not None and (workdir / "teacher_corpus").is_dir():
            from jdr.index.store import load_embeddings

            emb, self.doc_ids = load_embeddings(workdir / "teacher_corpus", mmap=False)
            self.doc_emb = np.ascontiguousarray(emb, np.float32)
        else:
            from jdr.data.beir import load_corpus

            corpus = load_corpus(data_dir / "corpus.jsonl")
            self.doc_ids = corpus.ids
            self.doc_emb = self._encode(corpus.passages(), "passage", cfg.data.passage_max_length)

    @functools.cached_property
    def model_dir(self):
        """Where `data.model` lives (`minilm`, a dir, a hub name or a `jdr train` workdir; `jdr.models.model_path`)."""
        from jdr.models.resolve import model_path

        return model_path(self.cfg.data.model)

    @functools.cached_property
    def model(self):
        """(params, spec, tokenizer) of `data.model`, loaded on first use."""
        from jdr.models.resolve import load

        return load(
            self.model_dir,
            query_max_length=self.cfg.data.query_max_length,
            passage_max_length=self.cfg.data.passage_max_length,
        )

    def query_tower(self):
        """The teacher's query tower as a trainable `QueryTower` (the start of "Distill-VQ + query encoder")."""
        from jdr.vq.query_tower import QueryTower

        params, spec, tok = self.model
        return QueryTower(params, spec, tok, self.model_dir)

    def texts(self, qids: list[str]) -> list[str]:
        """The query texts of these ids (from the dataset's queries.jsonl)."""
        if self._query_texts is None:
            from jdr.data.beir import load_queries

            self._query_texts = load_queries(self.data_dir / "queries.jsonl")
        missing = [q for q in qids if q not in self._query_texts]
        if missing:
            raise DataError(self.data_dir / "queries.jsonl", f"{len(missing)} query ids missing, e.g. {missing[0]!r}")
        return [self._query_texts[q] for q in qids]

    def _encode(self, texts: list[str], tower: str, max_length: int) -> np.ndarray:
        from jdr.models.inference import encode_texts

        params, spec, tok = self.model
        emb = encode_texts(
            params, spec, tok, texts, tower=tower, max_length=max_length, batch_size=self.cfg.data.batch_size
        )
        return np.ascontiguousarray(emb, np.float32)

    def queries(self, qids: list[str]) -> np.ndarray:
        """Query-tower embeddings [len(qids), d] of these query ids (DataError naming the store if one is missing)."""
        if self._store is not None:
            from jdr.index.store import load_embeddings

            emb, ids = load_embeddings(self._store / "queries", mmap=False)
            row = {q: i for i, q in enumerate(ids)}
            missing = [q for q in qids if q not in row]
            if missing:
                raise DataError(
                    self._store / "queries" / "ids.txt", f"{len(missing)} queries missing, e.g. {missing[0]!r}"
                )
            return np.ascontiguousarray(emb[[row[q] for q in qids]], np.float32)
        return self._encode(self.texts(qids), "query", self.cfg.data.query_max_length)

    def pseudo_queries(self) -> np.ndarray:
        """Label-free extra training queries per `data.pseudo_queries`: [0 | N, d]."""
        kind = self.cfg.data.pseudo_queries
        if kind == "doc":
            return self.doc_emb
        if kind == "title":
            if self.cfg.data.pseudo_embeddings:
                from jdr.index.store import load_embeddings

                emb, ids = load_embeddings(self.cfg.data.pseudo_embeddings, mmap=False)
                if ids != self.doc_ids:
                    raise DataError(Path(self.cfg.data.pseudo_embeddings) / "ids.txt", "ids differ from the corpus ids")
                return np.ascontiguousarray(emb, np.float32)
            from jdr.data.beir import load_corpus

            corpus = load_corpus(self.data_dir / "corpus.jsonl")
            row = {d: i for i, d in enumerate(corpus.ids)}
            return self._encode(
                [corpus.titles[row[d]] or corpus.passage(row[d]) for d in self.doc_ids],
                "query",
                self.cfg.data.query_max_length,
            )
        return np.zeros((0, self.doc_emb.shape[1]), np.float32)


def load_teacher(cfg, workdir: Path | None = None) -> tuple[Teacher, Path]:
    """Validate `cfg.data` and return (Teacher, resolved dataset dir)."""
    if cfg.data.pseudo_queries not in PSEUDO:
        raise ValueError(f"data.pseudo_queries: {cfg.data.pseudo_queries!r} is not one of {', '.join(PSEUDO)}")
    if cfg.data.embeddings and not Path(cfg.data.embeddings).is_dir():
        raise DataError(cfg.data.embeddings, "data.embeddings: no such directory")
    data_dir = resolve_dataset(cfg.data.dataset)
    return Teacher(cfg, data_dir, workdir), data_dir
