"""ANCE table, row 3 (and the README's main job): ANN negatives from the model being trained.

Warm start from BM25 negatives (as ANCE does); every `refresh_every` steps a background thread encodes the
corpus and training queries with a snapshot of the current parameters, rebuilds a faiss index and swaps in
negatives mined from its top-200, while the step loop keeps training on the previous table.
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_minilm.py")
    c.negatives.source = "ann"
    # A full SciFact re-encode takes ~5 minutes on 2 CPU cores, sharing them with the step loop in async mode:
    # a refresh started at step 10 lands several steps later; one due while another runs is skipped.
    c.negatives.refresh_every = 10
    c.negatives.refresh_mode = "async"
    return c
