"""Distill-VQ on SciFact at 48 bytes per document (M=48, 8 dims per sub-space): configs/scifact_vq16.py with a
bigger code."""

from jdr.config import sibling


def get_config():
    c = sibling(__file__, "scifact_vq16.py")
    c.vq.M = 48
    return c
