"""Row "LTRe" (ADORE): no sampled negatives at all. Only the query tower trains, by full retrieval over a fixed
exact faiss index of the released model's passage embeddings (the passage tower is frozen); each step retrieves
the top 200 for the batch's queries, appends any positive the search missed, and applies ADORE's
LambdaRank-weighted pairwise loss over that list. The index holds passages at 256 tokens — the length the test
evaluation encodes them at, so training and test search the same index (no passage is encoded during training,
so the 128-token training length of the other rows buys nothing here)."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.model.tied = False  # the query tower trains; the passage tower encoded the index and stays fixed
    c.model.passage_max_length = 256
    c.negatives.source = "none"
    c.negatives.num = 0
    c.ltre.enabled = True
    c.ltre.top_k = 200
    c.ltre.loss = "lambdarank"
    return c
