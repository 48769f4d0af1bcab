"""Row "KL": the bi-encoder's softmax over each group matches the cross-encoder's (listwise KL, teacher at 1.0)."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.train.objective = "distill"
    c.distill.loss = "kl"
    c.distill.teacher_temperature = 1.0
    return c
