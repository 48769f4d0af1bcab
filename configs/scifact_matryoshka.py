"""Matryoshka fine-tuning of all-MiniLM-L6-v2 on SciFact (issue 25), sized like configs/ance_exp/base.py: 2 epochs
of 25 steps at batch 32 (the 729 train queries after an 80-query dev hold-out), BM25 hard negatives (3 per query),
passages cut at 128 tokens in training.

The loss is InfoNCE summed over the nested prefixes 384, 256, 128, 64, 32 of the embedding (each prefix
re-normalised; weights 1 each, as sentence-transformers' MatryoshkaLoss defaults), so the first k dimensions are an
embedding of their own. The table that uses it:

  jdr train --config configs/scifact_matryoshka.py --workdir runs/scifact_matryoshka
  python benchmarks/byte_budget.py --matryoshka-workdir runs/scifact_matryoshka

(test rows at 384 / 256 / 128 / 64 / 32 dims, float and binary, beside the released model truncated the same way).
"""

from jdr.config import train_config

EPOCHS = 2
STEPS_PER_EPOCH = 25


def get_config():
    c = train_config()
    c.model.path = "minilm"
    c.model.query_max_length = 64
    c.model.passage_max_length = 128  # training length; the benchmark encodes the corpus at 256
    c.data.dataset = "scifact"
    c.data.dev_queries = 80
    c.negatives.source = "bm25"
    c.negatives.num = 3
    c.negatives.depth = 200
    c.train.steps = EPOCHS * STEPS_PER_EPOCH
    c.train.global_batch_size = 32
    c.train.lr = 2e-5
    c.train.warmup_steps = 5
    c.train.schedule = "linear"
    c.train.temperature = 0.05
    c.train.matryoshka_dims = "384,256,128,64,32"
    c.train.objective = "matryoshka"
    c.train.matryoshka_weights = ""  # 1 each
    c.eval.every = STEPS_PER_EPOCH
    c.eval.corpus_sample = 1000
    c.checkpoint.every = STEPS_PER_EPOCH
    c.checkpoint.keep = 1
    c.log.every = 5
    return c
