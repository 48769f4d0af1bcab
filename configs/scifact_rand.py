"""ANCE table, row 1: random negatives (identical to scifact_minilm.py: in-batch + 1 random negative)."""

from jdr.config import sibling


def get_config():
    return sibling(__file__, "scifact_minilm.py")
