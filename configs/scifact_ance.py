"""ANCE table, row 3 (and the README's main job): ANN negatives from the model being trained.

Warm start from BM25 negatives (as ANCE does); at steps 10 and 20 the corpus and training queries are re-encoded
with the current parameters, a faiss index is rebuilt and negatives are mined from its top-200 (the refresh due at
the last step is skipped: nothing would train on it).

Synchronous on purpose: on 2 CPU cores one refresh (5 183 passages at 256 tokens + 729 queries, exact faiss
index, top-200 mining) took 339 s alone, 1.05x the run's own final test encode, and an asynchronous refresh has
no spare hardware there: it would share the 2 cores with the step loop and land many steps late. Sync mode spends
the same CPU time, trains steps 11-30 on ANN negatives, and reproduces bit for bit. The whole run (30 steps, two
refreshes, dev and test evaluation) took 29 minutes on the 2-core CPU. Where the encode has hardware of its own,
use configs/scifact_ance_async.py (refresh_mode="async").
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_minilm.py")
    c.negatives.source = "ann"
    c.negatives.refresh_every = 10
    c.negatives.refresh_mode = "sync"
    return c
