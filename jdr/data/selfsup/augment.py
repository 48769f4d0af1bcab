"""Token-level augmentations of one view of a positive pair (Contriever, Mirror-BERT, ESimCSE), over token ids.

Each takes an int32 id array and an `np.random.Generator` and returns a new array; positions holding a special
token (`SpecialTokens.special_ids`: [CLS], [SEP], [UNK], [PAD], [MASK], ...) are never selected, moved or
produced, so a view may be augmented before or after its special tokens are added.

How many tokens change. Contriever draws a Bernoulli(p) per token; here the count is `floor(p * n + u)` with
`u ~ U(0, 1)` over the n eligible tokens — the same expectation `p * n`, but never off by more than one token,
so a 10-token query with p = 0.1 loses exactly one token on average and never four. The selected positions are
then uniform without replacement.
- `delete:p`: drop the selected tokens (Contriever's default, p = 0.1).
- `replace:p`: each selected token becomes a random non-special id different from itself.
- `mask:p`: each selected token becomes the mask token.
- `shuffle:p`: the selected tokens are rotated among their positions by a random non-zero shift, so every
  selected position receives another selected position's token (nothing stays put).
- `span:k`: one contiguous run of `min(k, n - 1)` eligible tokens becomes the mask token (Mirror-BERT, k = 5).
- `repeat:p`: each selected token is duplicated in place (ESimCSE's word repetition, on sub-word ids as its
  code does; ESimCSE's best rate is 0.32).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jdr.data.selfsup.tokens import SpecialTokens

KINDS = ("delete", "replace", "mask", "shuffle", "span", "repeat")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One augmentation: `kind` (one of `KINDS`) and `value` (a fraction in [0, 1], or the span length for
    `span`)."""

    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"augmentation {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "span":
            if self.value < 1 or self.value != int(self.value):
                raise ValueError(f"augmentation span:{self.value}: the span length must be a positive integer")
        elif not 0.0 <= self.value <= 1.0:
            raise ValueError(f"augmentation {self.kind}:{self.value}: the fraction must be in [0, 1]")


def parse_augmentations(text: str) -> tuple[Augmentation, ...]:
    """`"delete:0.1"`, `"span:5,repeat:0.32"` (applied left to right), or `""` / `"none"` for none."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    out = []
    for part in text.split(","):
        kind, sep, value = part.strip().partition(":")
        if not sep:
            raise ValueError(f"augmentation {part.strip()!r} must look like kind:value (e.g. delete:0.1)")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"augmentation {part.strip()!r}: {value!r} is not a number") from None
        out.append(Augmentation(kind.strip(), number))
    return tuple(out)


def apply_augmentations(
    ids: np.ndarray, augmentations: Sequence[Augmentation], rng: np.random.Generator, special: SpecialTokens
) -> np.ndarray:
    """Apply `augmentations` in order to the int32 `ids` -> a new int32 array."""
    for aug in augmentations:
        ids = augment(ids, aug, rng, special)
    return ids


def augment(ids: np.ndarray, aug: Augmentation, rng: np.random.Generator, special: SpecialTokens) -> np.ndarray:
    """One augmentation of `ids` (see the module docstring)."""
    ids = np.asarray(ids, np.int32)
    eligible = np.flatnonzero(~np.isin(ids, special.special_ids))
    if aug.kind == "span":
        return _span(ids, eligible, int(aug.value), rng, special)
    chosen = select(eligible, aug.value, rng)
    out = ids.copy()
    if aug.kind == "delete":
        return np.delete(out, chosen)
    if aug.kind == "replace":
        out[chosen] = _random_other(ids[chosen], rng, special)
    elif aug.kind == "mask":
        out[chosen] = _mask_id(special)
    elif aug.kind == "shuffle":
        if len(chosen) >= 2:
            out[chosen] = ids[np.roll(chosen, int(rng.integers(1, len(chosen))))]
    elif aug.kind == "repeat":
        counts = np.ones(len(ids), np.int64)
        counts[chosen] = 2
        out = np.repeat(ids, counts)
    return out


def select(eligible: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """`floor(p * n + u)` of the `n` positions in `eligible`, uniform without replacement, sorted."""
    n = len(eligible)
    k = min(n, int(np.floor(p * n + rng.random())))
    return np.sort(rng.choice(eligible, size=k, replace=False)) if k else np.zeros(0, np.int64)


def _mask_id(special: SpecialTokens) -> int:
    if special.mask_id is None:
        raise ValueError("augmentation mask/span: the tokenizer has no mask token")
    return special.mask_id


def _random_other(old: np.ndarray, rng: np.random.Generator, special: SpecialTokens) -> np.ndarray:
    """For each id in `old`, a uniform non-special id other than itself."""
    allowed = np.setdiff1d(np.arange(special.vocab_size), special.special_ids)
    if len(allowed) < 2:
        raise ValueError("augmentation replace: the vocabulary has fewer than two ordinary tokens")
    # Draw among allowed minus the token itself: index into allowed, skipping the old token's own slot.
    own = np.searchsorted(allowed, old)
    draw = rng.integers(0, len(allowed) - 1, size=len(old))
    draw = draw + (draw >= own)
    return allowed[draw].astype(np.int32)


def _span(ids, eligible, span, rng, special):
    n = len(eligible)
    length = min(span, n - 1)
    if length < 1:
        return ids.copy()
    start = int(rng.integers(0, n - length + 1))
    out = ids.copy()
    out[eligible[start : start + length]] = _mask_id(special)
    return out
