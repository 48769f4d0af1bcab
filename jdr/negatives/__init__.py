"""Hard negatives: the immutable, versioned `NegativesTable`, its sources and the ANCE refresh's build (its
scheduling during training is `jdr.train.refresh`)."""

from jdr.negatives.refresh import AnnRefreshConfig, ann_build_fn
from jdr.negatives.sources import SOURCES, build_table, parse_counts, source_counts
from jdr.negatives.table import RANDOM, NegativesTable

__all__ = [
    "RANDOM",
    "SOURCES",
    "AnnRefreshConfig",
    "NegativesTable",
    "ann_build_fn",
    "build_table",
    "parse_counts",
    "source_counts",
]
