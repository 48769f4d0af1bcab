"""ANCE table, row 3 (and the README's main job): ANN negatives from the model being trained.

Warm start from BM25 negatives (as ANCE does); at steps 10 and 20 the corpus and training queries are re-encoded
with the current parameters, a faiss index is rebuilt and negatives are mined from its top-200 (the refresh due at
the last step is skipped: nothing would train on it).

Synchronous on purpose: on 2 CPU cores a full SciFact re-encode (5 183 passages at 256 tokens) takes ~11 minutes
alone, and an asynchronous refresh has no spare hardware to run on: it shares the 2 cores with the step loop,
slows both, and the refresh started at step 10 had not landed by step 30 (configs/scifact_ance_async.py records
that run). Sync mode spends the same CPU time, trains steps 11-30 on ANN negatives, and reproduces bit for bit.
On accelerators, where the encode runs beside the step, use refresh_mode="async".
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_minilm.py")
    c.negatives.source = "ann"
    c.negatives.refresh_every = 10
    c.negatives.refresh_mode = "sync"
    return c
