"""Dataset readers (BEIR, MS MARCO). Every bad input raises `DataError` naming `path:line`."""

from jdr.data.beir import BeirData, Corpus, load_beir, load_corpus, load_qrels, load_queries, resolve_dataset
from jdr.errors import DataError

__all__ = [
    "BeirData",
    "Corpus",
    "DataError",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "resolve_dataset",
]
