"""The one dev split of a training set's queries: `jdr train` (`data.dev_queries`), `jdr vq train` and the
benchmarks hold out the same queries for the same seed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from jdr.config import ConfigError


def judged_queries(qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The queries with at least one positive judgment: the only ones trained on or held out (a Tevatron file
    cannot hold any other)."""
    return [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]


def split_dev(qids: Iterable[str], n_dev: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of the training queries into (train, dev), both sorted; dev is for evaluation during training.

    A function of the sorted query ids and the seed alone, so two readers of the same queries (a BEIR dir and the
    `jdr mine` JSONL written from it) hold out the same dev queries."""
    qids = sorted(qids)
    if n_dev <= 0:
        return qids, []
    if n_dev >= len(qids):
        raise ConfigError(f"data.dev_queries={n_dev} leaves no training queries out of {len(qids)}")
    perm = np.random.default_rng([seed, 0xDE5]).permutation(len(qids))
    dev = set(qids[i] for i in perm[:n_dev])
    return [q for q in qids if q not in dev], sorted(dev)
