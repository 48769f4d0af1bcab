"""Negatives for self-supervised pairs (`jdr.data.selfsup.PairSource`). A pseudo-query has no id a negatives
table could be keyed by, but its positive's document has: `document_negatives` builds a `NegativesTable` whose
"queries" are the documents themselves (each document's passage, cut to `query_words` words, is its pseudo-query;
its only positive is itself), so random / BM25 / hybrid negatives come from the table unchanged."""

from __future__ import annotations

from collections.abc import Mapping

from jdr.negatives.sources import build_table


def document_negatives(
    corpus, counts: Mapping[str, int], *, depth: int, seed: int, query_words: int = 64, skip_top: int = 0
):
    """A `NegativesTable` keyed by document id: `counts` per source ("random", "bm25"; `build_table`), `corpus` a
    `jdr.data.beir.Corpus`."""
    if set(counts) - {"random", "bm25"}:
        raise ValueError(f"self-supervised negatives come from random or bm25, got {sorted(counts)}")
    queries = {d: " ".join(corpus.passage(i).split()[:query_words]) for i, d in enumerate(corpus.ids)}
    qrels = {d: {d: 1} for d in corpus.ids}
    return build_table(
        dict(counts), corpus, queries, qrels, list(corpus.ids), depth=depth, seed=seed, skip_top=skip_top
    )
