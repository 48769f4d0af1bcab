"""Negatives from the training part of SciFact alone (the augmentation memory is loaded but given no quota)."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.negatives.memory_mix = "train:200"
    return c
