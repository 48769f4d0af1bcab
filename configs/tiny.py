"""A seconds-long run for tests: tiny random BERT (path set by the test), toy BEIR data, 8 CPU devices."""

from jdr.config import train_config


def get_config():
    c = train_config()
    c.model.path = ""  # set by the test to a jdr.models.testing.write_tiny_model dir
    c.model.query_max_length = 16
    c.model.passage_max_length = 32
    c.data.dataset = ""  # set by the test to a toy BEIR dir
    c.data.dev_queries = 4
    c.negatives.source = "random"
    c.negatives.num = 1
    c.negatives.depth = 10
    c.train.steps = 20
    c.train.global_batch_size = 16  # 2 queries per device on 8 fake devices
    c.train.lr = 1e-3
    c.train.warmup_steps = 2
    c.eval.every = 10
    c.eval.batch_size = 16
    c.checkpoint.every = 10
    c.checkpoint.async_save = False
    c.log.every = 5
    return c
