"""Row "ANCE": BM25 negatives for the first epoch (warm start), then negatives from the ANN top 200 of the model
being trained, re-mined every epoch (corpus re-encoded, exact faiss index rebuilt; synchronous)."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.negatives.source = "ann"
    c.negatives.refresh_every = c.eval.every  # one epoch
    return c
