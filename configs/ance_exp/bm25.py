"""Row "BM25": 3 negatives per query sampled from the bm25s top 200 (DPR's hard negatives), fixed all run."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.negatives.source = "bm25"
    return c
