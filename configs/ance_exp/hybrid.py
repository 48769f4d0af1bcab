"""Row "hybrid": per query 1 BM25 + 2 ANN negatives (the ANN share comes from BM25 until the first refresh),
re-mined every epoch."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "ance.py")
    c.negatives.source = "hybrid"
    c.negatives.hybrid = "bm25:1,ann:2"
    return c
