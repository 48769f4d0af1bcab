"""ANCE table, row 2: BM25 hard negatives (bm25s top-200, one sampled per query per step), same budget."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_minilm.py")
    c.negatives.source = "bm25"
    return c
