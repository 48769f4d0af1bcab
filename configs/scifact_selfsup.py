"""Zero-label domain adaptation on SciFact: all-MiniLM-L6-v2 continues training on SciFact's 5 183 documents alone
(no queries, no qrels, no dev split: nothing is chosen on labels), one generator per run, evaluated once on test.

Shared budget (sized for 2 CPU cores): 100 steps x 32 pairs, in-batch negatives only, InfoNCE t = 0.05,
AdamW 1e-5 (low: the starting model was trained on a billion pairs and drifts easily), 10 warm-up steps. Rows
override `data.selfsup.*` (and `moco.*`); see the README for the commands.
"""

from jdr.config import train_config

# The table's training rows: row name -> overrides of this config (benchmarks/zero_label.py runs them;
# tests/test_selfsup_train.py validates each).
ROWS = {
    "crop": [],
    "crop+moco": ["moco.enabled=true", "moco.queue_size=1024", "moco.momentum=0.99"],
    "ict": ["data.selfsup.pairs=ict", "model.query_max_length=64"],
    "ict+moco": [
        "data.selfsup.pairs=ict",
        "model.query_max_length=64",
        "moco.enabled=true",
        "moco.queue_size=1024",
        "moco.momentum=0.99",
    ],
    "simcse": ["data.selfsup.pairs=dropout"],
    "mirror": ["data.selfsup.pairs=dropout", "data.selfsup.query_augment=span:5"],
    "esimcse": ["data.selfsup.pairs=dropout", "data.selfsup.passage_augment=repeat:0.32"],
    "title": ["data.selfsup.pairs=title", "model.query_max_length=64"],
    "bm25": ["data.selfsup.pairs=bm25", "data.selfsup.query_unit=both", "model.query_max_length=64"],
}


def get_config():
    c = train_config()
    c.data.source = "selfsup"
    c.data.selfsup.pairs = "crop"
    c.data.selfsup.chunk_length = 252  # crops <= 126 tokens + [CLS]/[SEP]: one 128-token length bucket
    c.data.dev_queries = 0  # zero-label: no dev queries
    c.negatives.source = "none"
    c.negatives.num = 0
    c.model.query_max_length = 128  # crops are queries too; ICT / BM25 / title rows set 64
    c.model.passage_max_length = 256
    c.train.steps = 100
    c.train.global_batch_size = 32
    c.train.lr = 1e-5
    c.train.warmup_steps = 10
    c.train.temperature = 0.05
    c.eval.every = 0
    c.checkpoint.every = 50
    return c
