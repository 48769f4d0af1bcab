"""configs/scifact_bm25.py trained from a `jdr mine` file instead of the BEIR dir: the same groups, batch for batch.

Mine first (BM25 top-200 of every SciFact train query, positives removed, all 200 kept in rank order):
    jdr mine --data scifact --split train --source bm25 --depth 200 --sample-range 0-200 --num 0 \
        --output runs/mined/scifact_bm25_train.jsonl
then `jdr train --config configs/scifact_bm25_jsonl.py --workdir runs/scifact_bm25_jsonl`. With the same seed and
budget the run draws exactly the groups of scifact_bm25.py (same dev split from the same sorted query ids, same
ranked lists, same sampled negatives; tests/test_mine.py proves it on a toy dataset). Only the dev evaluation's
corpus differs (the file holds the mined passages, not all 5 183), so dev metrics are not comparable; the test
evaluation reads data.dataset as before.
"""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_bm25.py")
    c.data.source = "jsonl"
    c.data.jsonl.path = "runs/mined/scifact_bm25_train.jsonl"
    c.negatives.source = "file"  # the file's ranked BM25 list, sampled from its top negatives.depth (200)
    return c
