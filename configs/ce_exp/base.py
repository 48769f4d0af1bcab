"""The cross-encoder experiment (issue 24): the shared base of its bi-encoder rows; one small overlay per row.

Sized for the 2-core machine like configs/ance_exp/base.py: all-MiniLM-L6-v2 fine-tuned for 50 steps of 32 queries
(2 epochs of SciFact train after the 80-query dev hold-out), 3 hard negatives per query, passages cut at 128 tokens
in training (test at 256, run by benchmarks/cross_encoder_experiment.py), dev NDCG@10 every epoch picks the
checkpoint. The distillation rows and their InfoNCE reference train on the SAME groups: `jdr mine`'s BM25 + ANN
negatives of SciFact train (`data.jsonl.path`, set by the runner) scored by the experiment's cross-encoder with
`jdr score` — so they differ only in `train.objective` / `distill` (a test checks).
"""

from jdr.config import train_config

STEPS_PER_EPOCH = 25
EPOCHS = 2


def get_config():
    c = train_config()
    c.model.path = "minilm"
    c.model.query_max_length = 64
    c.model.passage_max_length = 128
    c.data.source = "jsonl"
    c.data.jsonl.path = ""  # the runner sets it: ROOT/groups/train_scored.jsonl
    c.data.dataset = "scifact"  # test evaluation (by the runner, once per row)
    c.data.dev_queries = 80
    c.negatives.source = "file"
    c.negatives.num = 3
    c.negatives.depth = 200
    c.train.steps = EPOCHS * STEPS_PER_EPOCH
    c.train.global_batch_size = 32
    c.train.lr = 2e-5
    c.train.warmup_steps = 5
    c.train.temperature = 0.05
    c.eval.every = STEPS_PER_EPOCH
    c.eval.corpus_sample = 1000
    c.eval.final_test = False
    c.checkpoint.every = STEPS_PER_EPOCH
    c.checkpoint.keep = 1
    c.log.every = 5
    return c
