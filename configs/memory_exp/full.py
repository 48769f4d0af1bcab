"""Reference: the full SciFact corpus is the training corpus (re-encoded at every refresh); `aug` gets no quota."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.data.dataset = "scifact"
    c.negatives.memory_mix = "train:200"
    return c
