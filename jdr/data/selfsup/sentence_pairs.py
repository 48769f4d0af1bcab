"""Sentence-level pair generators: the Inverse Cloze Task (ORQA) and BM25 pseudo-queries.

Both draw their queries from the sentences of `CorpusTokens` (split by `sentences.split_sentences`): a sentence
is a query candidate if it is not a structured-abstract heading and has at least `min_query_tokens` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jdr.data.selfsup.pairs import PairGenerator
from jdr.data.selfsup.tokens import CorpusTokens


def _sentence_docs(corpus: CorpusTokens) -> np.ndarray:
    """`[S]` int64: the document of each sentence."""
    return np.repeat(np.arange(len(corpus)), np.diff(corpus.doc_sentences))


def _query_sentences(corpus: CorpusTokens, min_query_tokens: int) -> np.ndarray:
    """`[S]` bool: sentences that may serve as a query."""
    return ~corpus.heading & (corpus.sentence_lengths >= max(1, min_query_tokens))


def _spans(owner: np.ndarray, n: int) -> np.ndarray:
    """`[n+1]` offsets of the runs of the sorted int array `owner` (values in [0, n))."""
    return np.searchsorted(owner, np.arange(n + 1), side="left")


class ICTPairs(PairGenerator):
    """Inverse Cloze Task (Lee et al., ORQA): a sentence of a document is the query; the document (title + body)
    is the positive, with that sentence removed with probability `remove_prob` (ORQA: 0.9 — kept 10 % of the
    time so the model still learns that word overlap matters).

    Query candidates must start within the positive's token budget (`passage_max_length`), so the key always
    holds the sentence's context; a document needs two or more non-heading sentences. Keys: the document id.
    """

    tag = 4

    def __init__(self, corpus: CorpusTokens, *, remove_prob: float = 0.9, min_query_tokens: int = 5, **kwargs):
        super().__init__(corpus, **kwargs)
        if not 0.0 <= remove_prob <= 1.0:
            raise ValueError(f"ict remove_prob must be in [0, 1], got {remove_prob}")
        self.remove_prob = remove_prob
        docs = _sentence_docs(corpus)
        in_passage = corpus.title_lengths[docs] + corpus.sentence_offsets[:-1] - corpus.body_offsets[
            docs
        ] < self.special.budget(self.passage_max_length)
        content = np.bincount(docs[~corpus.heading], minlength=len(corpus))
        ok = _query_sentences(corpus, min_query_tokens) & in_passage & (content[docs] >= 2)
        self._candidates = np.flatnonzero(ok)  # sentence ids, grouped by document (ascending)
        self._doc_span = _spans(docs[self._candidates], len(corpus))

    def _plan(self, rng):
        return np.flatnonzero(np.diff(self._doc_span) > 0)[:, None]

    def example(self, item, rng):
        doc = int(item[0])
        c = self.corpus
        s = int(self._candidates[rng.integers(self._doc_span[doc], self._doc_span[doc + 1])])
        remove = rng.random() < self.remove_prob
        body = c.text(doc)
        if remove:
            lo, hi = c.sentence_offsets[s] - c.body_offsets[doc], c.sentence_offsets[s + 1] - c.body_offsets[doc]
            body = np.concatenate([body[:lo], body[hi:]])
        key = np.concatenate([c.title(doc), body])
        return self._pair(c.sentence(s), key, rng, f"{c.ids[doc]}#s{s - c.doc_sentences[doc]}", doc)


class BM25Pairs(PairGenerator):
    """BM25 pseudo-queries: a sentence (`query_unit="sentence"`), the title (`"title"`) or either (`"both"`) of
    a document is the query, and its BM25 top document OTHER than its own (bm25s over the BEIR passages
    `title + " " + text`, as `jdr.index.bm25`) the positive.

    Why not the source document: a sentence's own document is its BM25 top hit almost always and contains it
    verbatim, so it would teach copy detection (ICT covers the source document without the sentence); the
    best other document is the lexical neighbour the notes' "query and top-k BM25 passages" means. The source
    is listed in `relevant` beside the positive, so a trainer masks it when it lands in the same batch.
    A unit whose only matches are its own document (score 0 elsewhere) is skipped. Queries retrieved once, at
    construction. Keys: the positive's document id.
    """

    tag = 5
    UNITS = ("sentence", "title", "both")

    def __init__(
        self,
        corpus: CorpusTokens,
        titles: Sequence[str],
        texts: Sequence[str],
        *,
        query_unit: str = "sentence",
        min_query_tokens: int = 5,
        k1: float = 1.5,
        b: float = 0.75,
        **kwargs,
    ):
        from jdr.index.bm25 import bm25_candidates

        super().__init__(corpus, **kwargs)
        if query_unit not in self.UNITS:
            raise ValueError(f"bm25 query_unit must be one of {', '.join(self.UNITS)}, got {query_unit!r}")
        if not len(titles) == len(texts) == len(corpus):
            raise ValueError(f"bm25 pairs: {len(titles)} titles and {len(texts)} texts for {len(corpus)} documents")
        docs = _sentence_docs(corpus)
        unit_doc, unit_sentence, queries = [], [], []
        if query_unit in ("sentence", "both"):
            sents = np.flatnonzero(_query_sentences(corpus, min_query_tokens))
            unit_doc.append(docs[sents])
            unit_sentence.append(sents)
            queries += [texts[d][s:e] for d, (s, e) in zip(docs[sents], corpus.sentence_chars[sents])]
        if query_unit in ("title", "both"):
            with_title = np.flatnonzero(corpus.title_lengths > 0)
            unit_doc.append(with_title)
            unit_sentence.append(np.full(len(with_title), -1))
            queries += [titles[d] for d in with_title]
        unit_doc, unit_sentence = np.concatenate(unit_doc), np.concatenate(unit_sentence)
        if not len(queries):
            raise ValueError("bm25 pairs: the corpus has no query candidates")
        passages = [f"{t} {x}".strip() for t, x in zip(titles, texts)]
        _, rows = bm25_candidates(passages, queries, k=2, preset="bm25s", k1=k1, b=b)  # unstemmed, as before
        positive = np.where(rows[:, 0] == unit_doc, rows[:, 1], rows[:, 0])
        keep = positive >= 0
        order = np.argsort(unit_doc[keep], kind="stable")
        self._unit_doc = unit_doc[keep][order]
        self._unit_sentence = unit_sentence[keep][order]
        self._unit_positive = positive[keep][order]
        self._doc_span = _spans(self._unit_doc, len(corpus))

    def _plan(self, rng):
        return np.flatnonzero(np.diff(self._doc_span) > 0)[:, None]

    def example(self, item, rng):
        doc = int(item[0])
        c = self.corpus
        u = int(rng.integers(self._doc_span[doc], self._doc_span[doc + 1]))
        s, positive = int(self._unit_sentence[u]), int(self._unit_positive[u])
        if s < 0:
            query, name = c.title(doc), "title"
        else:
            query, name = c.sentence(s), f"s{s - c.doc_sentences[doc]}"
        return self._pair(
            query, c.passage(positive), rng, f"{c.ids[doc]}#{name}", positive, also_relevant=(c.ids[doc],)
        )
