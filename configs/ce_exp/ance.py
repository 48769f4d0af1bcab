"""Row "ANCE": the reference of the denoising row: SciFact train (BEIR), BM25 warm start, ANN negatives re-mined by
the model being trained after the first epoch (sync refresh), same steps as the other rows."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.data.source = "beir"
    c.negatives.source = "ann"
    c.negatives.refresh_every = c.eval.every
    return c
