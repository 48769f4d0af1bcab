"""Fine-tune all-MiniLM-L6-v2 on SciFact train (809 queries) with in-batch + one random negative per query.

Budget sized for a 2-core CPU: 30 steps of 32 queries (about one epoch of SciFact's 919 train pairs) take
~10 minutes, the final test evaluation (a full corpus encode at 256 tokens) ~5 more. The same budget is shared
by configs/scifact_{rand,bm25,ance}.py, so the ANCE table compares negatives and nothing else.
"""

from jdr.config import train_config


def get_config():
    c = train_config()
    c.model.path = "minilm"
    c.model.query_max_length = 64
    c.model.passage_max_length = 256
    c.data.dataset = "scifact"
    c.data.dev_queries = 80  # held out of the 809 train queries; test is reported once, at the end
    c.negatives.source = "random"
    c.negatives.num = 1
    c.train.steps = 30
    c.train.global_batch_size = 32
    c.train.lr = 2e-5
    c.train.warmup_steps = 3
    c.train.temperature = 0.05  # sentence-transformers' MultipleNegativesRankingLoss scale 20
    c.eval.every = 0  # dev evaluation at the end only
    c.eval.corpus_sample = 1000  # dev corpus = dev positives + 1000 random docs: a full encode costs minutes on CPU
    c.checkpoint.every = 15
    c.log.every = 5
    return c
