"""ANCE table, LTRe row: train only the query tower of all-MiniLM-L6-v2 by full retrieval over a fixed exact index
of SciFact (the released model's passage embeddings), ADORE's lambdarank loss over the top-200 + missed positives.
Same model, data, steps, batch, lr and lengths as configs/scifact_{rand,bm25,ance}.py; no sampled negatives.
The training source gives the queries and their positives (as rows of the fixed index); the final test evaluation
encodes the corpus with the (unchanged) passage tower, i.e. searches the same exact index.
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_minilm.py")
    c.model.tied = False  # query tower trains; passage tower frozen (it encoded the index)
    c.negatives.source = "none"
    c.negatives.num = 0
    c.ltre.enabled = True
    c.ltre.top_k = 200
    c.ltre.loss = "lambdarank"
    return c
