"""The dual encoder: which BERT params a tower uses, and the one pure `encode` that training and inference call."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdr.models.bert import BertConfig, BertModel
from jdr.models.pooling import POOLING_MODES, l2_normalize, pool

TOWERS = ("query", "passage")
DENSE_ACTIVATIONS = {None: None, "identity": lambda x: x, "tanh": jnp.tanh}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Everything static about an encoder (hashable: it is a static jit argument). Params live separately.

    `tied=True`: params are `{"shared": bert_params}`; `tied=False`: `{"query": ..., "passage": ...}`.
    `dtype` is the compute dtype ("float32" | "bfloat16"); params are always float32.
    `dense`: activation of a sentence-transformers `Dense` module after pooling ("identity" | "tanh"), None for
    none; its weights are `params["dense"] = {"kernel": [H, k], "bias": [k]}`, shared by both towers.
    `normalize_before_dense`: an ST `Normalize` module sits before the Dense (a whitened normalised model:
    Pooling, Normalize, Dense, Normalize); `normalize` is always the last step.
    `truncate_dim`: keep the first k dimensions of the embedding (Matryoshka), re-normalised when `normalize`
    (sentence-transformers' `truncate_dim`, whose cosine similarity normalises too); None keeps all.
    `query_prefix` / `passage_prefix`: text put before every query / passage before tokenising ("query: ",
    "passage: " for E5; sentence-transformers' `prompts` named "query" and "passage").
    """

    bert: BertConfig
    pooling: str = "cls"
    normalize: bool = False
    query_max_length: int = 512
    passage_max_length: int = 512
    tied: bool = True
    dtype: str = "float32"
    model_type: str = "bert"
    dense: str | None = None
    normalize_before_dense: bool = False
    truncate_dim: int | None = None
    query_prefix: str = ""
    passage_prefix: str = ""

    def __post_init__(self):
        if self.truncate_dim is not None and not (
            isinstance(self.truncate_dim, int)
            and self.truncate_dim >= 1
            and (self.dense is not None or self.truncate_dim <= self.bert.hidden_size)
        ):
            raise ValueError(
                f"dim: {self.truncate_dim!r} is not in [1, {self.bert.hidden_size}] (the model's embedding width)"
            )
        for key in ("query_prefix", "passage_prefix"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key}: must be a string, got {getattr(self, key)!r}")
        if self.dense not in DENSE_ACTIVATIONS:
            raise ValueError(
                f"dense: activation must be one of {sorted(DENSE_ACTIVATIONS, key=str)}, got {self.dense!r}"
            )
        if self.normalize_before_dense and self.dense is None:
            raise ValueError("normalize_before_dense needs a dense layer")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling: unknown mode {self.pooling!r} (known: {', '.join(POOLING_MODES)})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for key in ("query_max_length", "passage_max_length"):
            n = getattr(self, key)
            if not 2 <= n <= self.bert.max_length:
                raise ValueError(f"{key}: {n} is outside [2, {self.bert.max_length}] (position table size)")

    def max_length(self, tower: str) -> int:
        """The token budget of `tower`."""
        return self.query_max_length if _check_tower(tower) == "query" else self.passage_max_length

    def prefix(self, tower: str) -> str:
        """The text put before every input of `tower`."""
        return self.query_prefix if _check_tower(tower) == "query" else self.passage_prefix

    def module(self) -> BertModel:
        """The linen module with this spec's architecture and compute dtype."""
        return BertModel(self.bert, dtype=DTYPES[self.dtype])


def _check_tower(tower: str) -> str:
    if tower not in TOWERS:
        raise ValueError(f"tower: must be 'query' or 'passage', got {tower!r}")
    return tower


def tower_params(params: dict, spec: EncoderSpec, tower: str) -> dict:
    """The BERT param tree that `tower` uses: `params["shared"]` when tied, else `params[tower]`."""
    return params["shared"] if spec.tied else params[_check_tower(tower)]


def make_params(bert_params: dict, tied: bool) -> dict:
    """Wrap one BERT param tree as dual-encoder params (untied: both towers start as copies of it)."""
    if tied:
        return {"shared": bert_params}
    return {"query": bert_params, "passage": jax.tree.map(jnp.array, bert_params)}


def init_params(spec: EncoderSpec, rng: jax.Array) -> dict:
    """Random-init dual-encoder params for `spec` (float32)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    bert = spec.module().init(rng, ids, jnp.ones_like(ids))["params"]
    if spec.tied:
        return make_params(bert, True)
    return {"query": bert, "passage": spec.module().init(jax.random.fold_in(rng, 1), ids, jnp.ones_like(ids))["params"]}


def encode(params, spec: EncoderSpec, input_ids, attention_mask, *, tower: str, deterministic: bool = True, rng=None):
    """Embed token arrays `input_ids[B,L]`, `attention_mask[B,L]` (int32) with `tower` -> float32 [B,H].

    BERT, then `spec.pooling` over unmasked tokens, then the Dense layer if `spec.dense` (H becomes its width),
    then L2-normalise if `spec.normalize`, then keep the first `spec.truncate_dim` dimensions (re-normalised when
    `spec.normalize`). Pure; jit with `spec`,
    `tower` and `deterministic` static. `rng` (dropout key) is required when `deterministic=False`.
    """
    if not deterministic and rng is None:
        raise ValueError("encode: deterministic=False needs an rng for dropout")
    rngs = {} if deterministic else {"dropout": rng}
    hidden = spec.module().apply(
        {"params": tower_params(params, spec, tower)}, input_ids, attention_mask, deterministic=deterministic, rngs=rngs
    )
    return head(params, spec, pool(hidden, attention_mask, spec.pooling))


def head(params, spec: EncoderSpec, pooled):
    """What follows pooling: the Dense layer if `spec.dense` (normalised first if `normalize_before_dense`), then
    L2-normalise if `spec.normalize`. `pooled[..., H]` -> `[..., embedding_dim]`."""
    out = pooled
    if spec.dense is not None:
        if spec.normalize_before_dense:
            out = l2_normalize(out)
        out = DENSE_ACTIVATIONS[spec.dense](out @ params["dense"]["kernel"] + params["dense"]["bias"])
    if spec.truncate_dim is not None:
        out = out[..., : spec.truncate_dim]
    return l2_normalize(out) if spec.normalize else out


def full_dim(params, spec: EncoderSpec) -> int:
    """Width of the embedding before any truncation: the Dense layer's output, else the hidden size."""
    return int(params["dense"]["kernel"].shape[1]) if spec.dense is not None else spec.bert.hidden_size


def embedding_dim(params, spec: EncoderSpec) -> int:
    """Width of the embeddings `encode` returns: `spec.truncate_dim`, else the Dense layer's output, else the
    hidden size."""
    return spec.truncate_dim if spec.truncate_dim is not None else full_dim(params, spec)


def with_truncation(params, spec: EncoderSpec, dim: int | None) -> EncoderSpec:
    """`spec` returning the first `dim` dimensions (None: unchanged); a `dim` above the model's width is one
    ValueError line."""
    if dim is None:
        return spec
    width = full_dim(params, spec)
    if not 1 <= dim <= width:
        raise ValueError(f"--dim {dim}: the model's embeddings have {width} dimensions (give 1..{width})")
    return dataclasses.replace(spec, truncate_dim=int(dim))
