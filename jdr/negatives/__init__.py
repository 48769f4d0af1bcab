"""Hard negatives: the immutable, versioned `NegativesTable`, its sources and the ANCE refresh hook."""

from jdr.negatives.refresh import AnnRefreshConfig, RefreshError, RefreshHook, RefreshRecord, ann_build_fn
from jdr.negatives.sources import SOURCES, build_table, parse_counts, source_counts
from jdr.negatives.table import RANDOM, NegativesTable

__all__ = [
    "RANDOM",
    "SOURCES",
    "AnnRefreshConfig",
    "NegativesTable",
    "RefreshError",
    "RefreshHook",
    "RefreshRecord",
    "ann_build_fn",
    "build_table",
    "parse_counts",
    "source_counts",
]
