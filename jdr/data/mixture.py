"""Several training sources with weights: multi-dataset training.

Two ways to mix (FlagEmbedding's `same_dataset_within_batch`, sentence-transformers' multi-dataset batch
sampler): with `same_source_batches` each global batch comes whole from one member, drawn with probability
proportional to its weight from `default_rng([seed, MIX, position])` — in-batch negatives from another dataset
are too easy to teach anything; otherwise every batch is split over the members in proportion to the weights
(largest remainder), each member contributing a fixed number of rows. Members' keys are namespaced by their
name, so a false-negative mask never links passages of two datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jdr.config import ConfigError
from jdr.data.source import Example, TrainingSource, check_state

_MIX_KEY = 0x4D4958  # keeps the member-choice stream apart from every other seeded stream
MEMBER_KINDS = ("beir", "jsonl", "triplets")  # `data.mixture.members` kinds: labelled sources


def split_rows(total: int, weights: Sequence[float]) -> list[int]:
    """`total` rows over members in proportion to `weights` (largest remainder; ties to the earlier member).
    Every member with a positive weight gets at least one row when `total` allows; ValueError otherwise."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"mixture weights must be positive numbers, got {list(weights)}")
    if total < len(w):
        raise ValueError(f"a batch of {total} rows cannot hold {len(w)} mixture members")
    share = w / w.sum() * total
    rows = np.maximum(np.floor(share).astype(int), 1)
    while rows.sum() > total:  # the floor of 1 overshot: take back from the most over-served member above 1
        rows[np.argmax(np.where(rows > 1, rows - share, -np.inf))] -= 1
    order = np.argsort(-(share - rows), kind="stable")
    for i in order[: total - rows.sum()]:
        rows[i] += 1
    return rows.tolist()


class MixtureSource(TrainingSource):
    """Global batches drawn from `members` (`(name, source, weight)`; see the module docstring).

    With `same_source_batches`, every member's `global_batch_size` must equal this mixture's; otherwise member i
    must have been built with `split_rows(global_batch_size, weights)[i]` rows. All members share one group
    size. `state()` holds the mixture's position and every member's state.
    """

    def __init__(
        self,
        members: Sequence[tuple[str, TrainingSource, float]],
        *,
        global_batch_size: int,
        seed: int,
        same_source_batches: bool = True,
    ):
        if not members:
            raise ValueError("a mixture needs at least one member")
        names = [m[0] for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture member names repeat: {names}")
        self.names = names
        self.sources = [m[1] for m in members]
        self.weights = np.asarray([m[2] for m in members], dtype=np.float64)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.same_source_batches = same_source_batches
        groups = {s.group_size for s in self.sources}
        if len(groups) != 1:
            raise ValueError(f"mixture members have different group sizes {sorted(groups)}: set one negatives.num")
        self.group_size = groups.pop()
        want = (
            [global_batch_size] * len(members) if same_source_batches else split_rows(global_batch_size, self.weights)
        )
        for name, source, rows in zip(names, self.sources, want):
            if source.global_batch_size != rows:
                raise ValueError(
                    f"mixture member {name!r} yields batches of {source.global_batch_size}, the mixture needs {rows}"
                )
        self._position = 0
        self.counts = [0] * len(members)  # batches (same-source) drawn from each member, for the run record

    def member_for(self, position: int) -> int:
        """Index of the member that supplies global batch `position` (same-source mode)."""
        rng = np.random.default_rng([self.seed, _MIX_KEY, position])
        return int(rng.choice(len(self.sources), p=self.weights / self.weights.sum()))

    def next_batch(self) -> list[Example]:
        if self.same_source_batches:
            i = self.member_for(self._position)
            self.counts[i] += 1
            out = self.sources[i].next_batch()
        else:
            out = [ex for source in self.sources for ex in source.next_batch()]
        self._position += 1
        return out

    def state(self) -> dict[str, Any]:
        return {
            "kind": "mixture",
            "position": self._position,
            "names": list(self.names),
            "same_source_batches": self.same_source_batches,
            "seed": self.seed,
            "members": {n: s.state() for n, s in zip(self.names, self.sources)},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        check_state(
            state,
            {
                "kind": "mixture",
                "names": list(self.names),
                "seed": self.seed,
                "same_source_batches": self.same_source_batches,
            },
            "mixture",
        )
        for name, source in zip(self.names, self.sources):
            source.restore(state["members"][name])
        self._position = int(state["position"])
        if self.same_source_batches:
            self.counts = np.bincount(
                [self.member_for(p) for p in range(self._position)], minlength=len(self.sources)
            ).tolist()

    def describe(self) -> dict[str, Any]:
        return {
            "members": {
                n: {"weight": float(w), **s.describe()} for n, s, w in zip(self.names, self.sources, self.weights)
            },
            "same_source_batches": self.same_source_batches,
        }


def parse_members(spec: str) -> list[tuple[str, str, float]]:
    """`"jsonl:a.jsonl:2;beir:scifact:1"` -> `[("jsonl", "a.jsonl", 2.0), ("beir", "scifact", 1.0)]`."""
    members = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, sep, rest = part.partition(":")
        where, sep2, weight = rest.rpartition(":")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not sep or not sep2 or kind not in MEMBER_KINDS or not where or not w > 0:
            raise ConfigError(
                f"data.mixture.members: bad member {part!r}; expected 'kind:path_or_name:weight' with "
                f"kind in {list(MEMBER_KINDS)} and a positive weight"
            )
        members.append((kind, where, w))
    if not members:
        raise ConfigError("data.mixture.members is empty: name at least one 'kind:path_or_name:weight'")
    return members
