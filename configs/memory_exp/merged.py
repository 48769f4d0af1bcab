"""Negatives from one ranking over the training part + the augmentation memory (MoMA's merged mixture)."""

from jdr.config import sibling


def get_config():
    return sibling(__file__, "base.py")  # negatives.memory_mix = "merged"
