"""BM25 candidates with the `bm25s` library (lexical hard negatives, as in DPR's BM25 negatives).

Two presets (`PRESETS`), both with Lucene's scoring (`bm25s.BM25(method="lucene")`) and Lucene's English stopwords:
  * "lucene" (default): Pyserini's BEIR "flat" BM25 — k1 0.9, b 0.4, Porter stemming (PyStemmer), tokens of one or
    more word characters (Lucene's tokenizer keeps one-character tokens). SciFact test NDCG@10 0.6769 (Pyserini's
    reported 0.6789).
  * "bm25s": bm25s's defaults, jdr's BM25 before — k1 1.5, b 0.75, no stemming, tokens of two or more word
    characters. SciFact test NDCG@10 0.6617.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

# bm25s sets its own logger to DEBUG at import; once anything gives the root logger a handler (absl does, when
# orbax is imported) its "Building index from IDs objects" lines reach stderr between jdr's progress bars.
logging.getLogger("bm25s").setLevel(logging.WARNING)

PRESETS: dict[str, dict] = {
    "lucene": {"k1": 0.9, "b": 0.4, "stemmer": "porter", "token_pattern": r"(?u)\b\w+\b"},
    "bm25s": {"k1": 1.5, "b": 0.75, "stemmer": None, "token_pattern": r"(?u)\b\w\w+\b"},
}
DEFAULT_PRESET = "lucene"


def check_preset(preset: str, where: str = "bm25 preset") -> str:
    """`preset` if it names one of `PRESETS`, else a one-line ValueError naming `where` (the option or key)."""
    if preset not in PRESETS:
        raise ValueError(f"{where} must be one of {', '.join(PRESETS)}, got {preset!r}")
    return preset


def _tokenize(texts: Sequence[str], settings: dict, stopwords: str):
    stemmer = None
    if settings["stemmer"]:
        import Stemmer  # PyStemmer: Snowball's C stemmers, which bm25s calls through `stemWords`

        stemmer = Stemmer.Stemmer(settings["stemmer"])
    return bm25s.tokenize(
        list(texts), stopwords=stopwords, stemmer=stemmer, token_pattern=settings["token_pattern"], show_progress=False
    )


def bm25_candidates(
    passages: Sequence[str],
    query_texts: Sequence[str],
    k: int,
    *,
    preset: str = DEFAULT_PRESET,
    k1: float | None = None,
    b: float | None = None,
    stopwords: str = "en",
) -> tuple[np.ndarray, np.ndarray]:
    """Index `passages[N]` (BEIR `title + " " + text`) and retrieve the top-`k` for each of `query_texts[Q]` with
    the BM25 `preset` (`PRESETS`; `k1` / `b` override its parameters).

    Returns `(scores[Q, k] float32, rows[Q, k] int64)`, best first, equal scores in row order, so the top-k is a
    prefix of the top-(k+m) (bm25s selects with `jax.lax.top_k`, lower index first on ties): `jdr mine` and the
    training table, which ask for different k, rank the same. Docs sharing no term with the query (score 0) are
    -1: they are not hard negatives, and the table tops such a list up with random docs. `k` is clipped to N.
    """
    settings = dict(PRESETS[check_preset(preset)])
    settings.update({name: v for name, v in (("k1", k1), ("b", b)) if v is not None})
    if not len(passages):
        raise ValueError("bm25: the corpus is empty")
    if not len(query_texts):
        raise ValueError("bm25: no queries to retrieve for")
    kk = min(k, len(passages))
    retriever = bm25s.BM25(k1=settings["k1"], b=settings["b"], method="lucene")
    retriever.index(_tokenize(passages, settings, stopwords), show_progress=False)
    # queries tokenised on their own: bm25s maps their tokens onto the index vocabulary (unknown ones dropped)
    rows, scores = retriever.retrieve(_tokenize(query_texts, settings, stopwords), k=kk, show_progress=False)
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    order = np.lexsort((rows, -scores))  # per query: score descending, then row ascending
    rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
    rows[scores <= 0] = -1
    if kk < k:
        pad = ((0, 0), (0, k - kk))
        rows, scores = np.pad(rows, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)
    return scores, rows
