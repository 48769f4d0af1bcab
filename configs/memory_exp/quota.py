"""Negatives from 100 candidates of the training part and 100 of the augmentation memory per query."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "base.py")
    c.negatives.memory_mix = "train:100,aug:100"
    return c
