"""Distill-VQ on SciFact at 8 bytes per document (M=8): configs/scifact_vq16.py with a smaller code."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_vq16.py")
    c.vq.M = 8
    return c
