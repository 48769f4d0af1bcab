"""Distill-VQ + query encoder: the query tower learns together with the index while documents stay fixed.

The paper's second variant (and LibVQ's "joint" mode): the student score is f_θ(q)·recon(d) with the query encoder
f_θ trained by the same distillation loss; the teacher score keeps the frozen teacher's query embedding q·d. Only
the query side moves, so the corpus never has to be re-encoded and the exported faiss index stays valid.

The tower runs deterministically (no dropout): the distillation target is a ranking, there is no augmentation to
gain, and the step needs no PRNG, so runs repeat exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optax

from jdr.models.encoder import EncoderSpec, encode
from jdr.models.tokenize import tokenize

__all__ = ["QueryTower", "vq_optimizer"]


@dataclasses.dataclass(frozen=True)
class QueryTower:
    """A trainable query encoder: `params` (jdr encoder tree), its `spec`, `tokenizer`, and the HF `model_dir` it was
    loaded from (export copies the tokenizer and config from there)."""

    params: Any
    spec: EncoderSpec
    tokenizer: Any
    model_dir: Path

    @classmethod
    def load(cls, model_dir, *, max_length: int) -> QueryTower:
        """The query tower of an HF / sentence-transformers dir, queries cut at `max_length` tokens."""
        from jdr.models.hf import load

        params, spec, tokenizer = load(model_dir, query_max_length=max_length)
        return cls(params, spec, tokenizer, Path(model_dir))

    def tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """{"query_ids", "query_mask"}: int32 [N, L], one L for all texts (so the jitted step compiles once)."""
        if not len(texts):
            raise ValueError("QueryTower.tokens: no query texts")
        t = tokenize(self.tokenizer, list(texts), self.spec.query_max_length)
        return {"query_ids": t.input_ids, "query_mask": t.attention_mask}

    def embed_fn(self):
        """`(params, batch) -> [B, d]`: the jdr.vq.train QueryFn reading `query_ids` / `query_mask` from the batch."""
        spec = self.spec

        def query_fn(params, batch):
            return encode(params, spec, batch["query_ids"], batch["query_mask"], tower="query", deterministic=True)

        return query_fn

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Query embeddings [N, d] float32 with the current params (bucketed inference, as `jdr encode` does)."""
        from jdr.models.inference import encode_texts

        return np.ascontiguousarray(
            encode_texts(
                self.params,
                self.spec,
                self.tokenizer,
                list(texts),
                tower="query",
                batch_size=batch_size,
                progress=False,
            ),
            np.float32,
        )

    def export(self, out_dir) -> Path:
        """Write the tower as an HF + sentence-transformers dir (what `jdr encode` / `jdr search` load)."""
        from jdr.models.hf import export

        return export(self.params, self.spec, self.model_dir, out_dir, tower="query")


def vq_optimizer(lr: float, encoder_lr: float | None = None) -> optax.GradientTransformation:
    """Adam at `lr` for the quantiser; with `encoder_lr`, Adam at that rate for the "query" subtree (a pre-trained
    encoder wants a rate ~100x smaller than freshly initialised codebooks)."""
    if encoder_lr is None:
        return optax.adam(lr)
    return optax.multi_transform(
        {"vq": optax.adam(lr), "query": optax.adam(encoder_lr)},
        lambda params: {k: ("query" if k == "query" else "vq") for k in params},
    )
