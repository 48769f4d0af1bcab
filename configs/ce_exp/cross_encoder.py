"""The experiment's cross-encoder: all-MiniLM-L6-v2's encoder with a fresh one-logit head, trained with the
localized-contrastive loss on `jdr mine`'s BM25 + ANN negatives of SciFact train (`data.jsonl.path`, set by the
runner), 7 negatives a query (group of 8), pairs of up to 64 + 128 - 1 tokens. No dev split: evaluation retrieves
with embeddings, so the runner evaluates the final checkpoint by reranking (`jdr rerank`) on test, once."""

from jdr.config import train_config


def get_config():
    c = train_config()
    c.model.path = "minilm"
    c.model.query_max_length = 64
    c.model.passage_max_length = 128
    c.data.source = "jsonl"
    c.data.jsonl.path = ""  # the runner sets it: ROOT/groups/train_mined.jsonl
    c.data.dataset = "scifact"
    c.data.dev_queries = 0
    c.negatives.source = "file"
    c.negatives.num = 7
    c.negatives.depth = 200
    c.train.objective = "cross_encoder"
    c.cross_encoder.loss = "localized_contrastive"
    c.train.steps = 100
    c.train.global_batch_size = 16
    c.train.lr = 1e-4  # 3e-5 left the head at chance after 50 steps (loss 2.05, ln 8 = 2.08); 1e-4 learns
    c.train.warmup_steps = 10
    c.eval.every = 0
    c.eval.final_test = False
    c.checkpoint.every = 25
    c.checkpoint.keep = 1
    c.log.every = 5
    return c
