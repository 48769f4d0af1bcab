"""Row "random": 3 negatives per query drawn uniformly from the corpus (no hard negatives)."""

from jdr.config import sibling


def get_config():
    return sibling(__file__, "base.py")
