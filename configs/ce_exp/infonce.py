"""Row "InfoNCE": the contrastive objective alone on the scored groups (the scores unused): the reference the
distillation rows are tested against, same steps and negatives."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.train.objective = "contrastive"
    return c
