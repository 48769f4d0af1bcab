"""Row "Margin-MSE": the bi-encoder learns the cross-encoder's margins positive - negative (Hofstaetter et al.)."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.train.objective = "distill"
    c.distill.loss = "margin_mse"
    return c
