"""BM25 candidates with the `bm25s` library: jdr's one lexical retriever (BM25 hard negatives as in DPR, `jdr mine`,
`jdr search --bm25`, self-supervised BM25 pairs)."""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np


def bm25_candidates(passages: Sequence[str], query_texts: Sequence[str], k: int, *, k1: float = 1.5,
                    b: float = 0.75, stopwords: str = "en") -> tuple[np.ndarray, np.ndarray]:
    """Index `passages[N]` (BEIR `title + " " + text`) and retrieve the top-`k` for each of `query_texts[Q]`.

    Returns `(scores[Q, k] float32, rows[Q, k] int64)`, best first, equal scores in row order, so the top-k is a
    prefix of the top-(k+m) (bm25s selects with `jax.lax.top_k`, lower index first on ties): `jdr mine` and the
    training table, which ask for different k, rank the same. Docs sharing no term with the query (score 0) are
    -1: they are not hard negatives, and the table tops such a list up with random docs. `k` is clipped to N.
    """
    if not len(passages):
        raise ValueError("bm25: the corpus is empty")
    if not len(query_texts):
        raise ValueError("bm25: no queries to retrieve for")
    kk = min(k, len(passages))
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(bm25s.tokenize(list(passages), stopwords=stopwords, show_progress=False), show_progress=False)
    # queries tokenised on their own: bm25s maps their tokens onto the index vocabulary (unknown ones dropped)
    q_tokens = bm25s.tokenize(list(query_texts), stopwords=stopwords, show_progress=False)
    rows, scores = retriever.retrieve(q_tokens, k=kk, show_progress=False)
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    order = np.lexsort((rows, -scores))  # per query: score descending, then row ascending
    rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
    rows[scores <= 0] = -1
    if kk < k:
        pad = ((0, 0), (0, k - kk))
        rows, scores = np.pad(rows, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)
    return scores, rows
