"""RocketQA's denoising of hard negatives with a cross-encoder (Qu et al. 2021): a mined candidate the
cross-encoder scores as relevant is most likely an unlabelled positive, so it is dropped before sampling.

Two rules (as `jdr.negatives.denoise` has for a dense teacher): `threshold` drops candidates whose logit is
`>= threshold`; `margin` drops those `>= the query's weakest positive's logit - margin`. Only each query's first
`depth` candidates are judged (where unlabelled positives concentrate; a cross-encoder pass over a 200-deep list
of every query would cost more than the training): deeper candidates are kept. `jdr mine --ce-model` and the
ANCE refresh (`negatives.ce_denoise_model`) use the same `CrossEncoderFilter`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jdr.negatives.denoise import near_positive


@dataclasses.dataclass
class CrossEncoderFilter:
    """A cross-encoder (`params`, `spec`, `tokenizer`) judging candidates of `corpus` (a `jdr.data.beir.Corpus`)
    for `queries` (`{qid: text}`). Exactly one of `threshold` / `margin`."""

    params: Any
    spec: Any
    tokenizer: Any
    corpus: Any
    queries: Mapping[str, str]
    threshold: float | None = None
    margin: float | None = None
    depth: int = 30
    batch_size: int = 64
    progress: bool = False

    def __post_init__(self):
        if (self.threshold is None) == (self.margin is None):
            raise ValueError("cross-encoder denoising needs exactly one of a threshold and a margin")
        if self.depth < 1:
            raise ValueError(f"cross-encoder denoising depth must be >= 1, got {self.depth}")

    def drop_mask(
        self, qids: Sequence[str], rows: np.ndarray, pos_offsets: np.ndarray, pos_rows: np.ndarray
    ) -> np.ndarray:
        """bool `[Q, K]`: the candidates `rows[Q, K]` (corpus rows in rank order, -1 padded) to drop.
        `pos_offsets[Q+1]`, `pos_rows`: each query's positives (CSR), needed by the margin rule."""
        from jdr.models.cross_encoder import score_texts

        rows = np.asarray(rows)
        judged = np.zeros(rows.shape, bool)
        judged[:, : self.depth] = rows[:, : self.depth] >= 0
        q_idx, c_idx = np.nonzero(judged)
        pairs_q = [self.queries[qids[i]] for i in q_idx]
        pairs_p = [self.corpus.passage(int(r)) for r in rows[q_idx, c_idx]]
        owner = np.repeat(np.arange(len(qids)), np.diff(pos_offsets)) if self.margin is not None else np.zeros(0, int)
        if self.margin is not None:
            pairs_q += [self.queries[qids[i]] for i in owner]
            pairs_p += [self.corpus.passage(int(r)) for r in pos_rows]
        logits = (
            score_texts(
                self.params,
                self.spec,
                self.tokenizer,
                pairs_q,
                pairs_p,
                batch_size=self.batch_size,
                progress=self.progress,
                desc="cross-encoder denoise",
            )
            if pairs_q
            else np.zeros(0)
        )
        scores = np.full(rows.shape, np.nan, np.float32)
        scores[q_idx, c_idx] = logits[: len(q_idx)]
        if self.threshold is not None:
            return near_positive(scores, self.threshold)
        reference = np.full(len(qids), np.inf, np.float32)
        np.minimum.at(reference, owner, logits[len(q_idx) :])
        reference[np.diff(pos_offsets) == 0] = np.nan  # no positive: keep the query's candidates
        return near_positive(scores, self.margin, reference)

    def filter(
        self, qids: Sequence[str], rows: np.ndarray, pos_offsets: np.ndarray, pos_rows: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """`rows` without the dropped candidates (order kept, -1 padded at the end) and how many were dropped."""
        rows = np.asarray(rows)
        drop = self.drop_mask(qids, rows, pos_offsets, pos_rows) & (rows >= 0)
        keep = (rows >= 0) & ~drop
        perm = np.argsort(~keep, axis=1, kind="stable")
        out = np.take_along_axis(rows, perm, axis=1).copy()
        out[~np.take_along_axis(keep, perm, axis=1)] = -1
        return out, int(drop.sum())


def load_filter(
    model: str,
    corpus,
    queries,
    *,
    threshold=None,
    margin=None,
    depth: int = 30,
    batch_size: int = 64,
    progress: bool = False,
) -> CrossEncoderFilter:
    """`CrossEncoderFilter` over the cross-encoder at `model` (a dir, hub name or cross-encoder workdir)."""
    from jdr.models.cross_encoder_hf import load_cross_encoder

    params, spec, tok = load_cross_encoder(model)
    return CrossEncoderFilter(
        params,
        spec,
        tok,
        corpus,
        queries,
        threshold=threshold,
        margin=margin,
        depth=depth,
        batch_size=batch_size,
        progress=progress,
    )


def check_config(negatives) -> None:
    """`negatives.ce_denoise_*` (the ANCE refresh's cross-encoder denoising): a model with exactly one rule, only
    where a refresh runs; one ValueError line otherwise."""
    rules = [k for k in ("ce_denoise_threshold", "ce_denoise_margin") if negatives[k] is not None]
    if not negatives.ce_denoise_model and not rules:
        return
    if not negatives.ce_denoise_model or len(rules) != 1:
        raise ValueError(
            "negatives.ce_denoise_model goes with exactly one of negatives.ce_denoise_threshold / "
            f"negatives.ce_denoise_margin (model {negatives.ce_denoise_model!r}, rules set: {rules})"
        )
    if negatives.refresh_every <= 0:
        raise ValueError(
            "negatives.ce_denoise_model denoises the ANCE refresh: set negatives.refresh_every > 0 "
            "(offline: `jdr mine --ce-model`)"
        )
    if negatives.ce_denoise_depth < 1:
        raise ValueError("negatives.ce_denoise_depth must be >= 1")
