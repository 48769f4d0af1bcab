"""The cross-encoder: `[CLS] query [SEP] passage [SEP]` (token type 0 / 1) through the same BERT as the dual encoder
(`jdr.models.bert.BertModel`), then a one-logit head, as HF `*ForSequenceClassification` with `num_labels=1`:

- BERT head (`head="bert"`): `pooler` = Dense + tanh on the first token, dropout, `classifier` Dense(1).
- RoBERTa head (`head="roberta"`): first token, dropout, `classifier/dense` + tanh, dropout, `classifier/out_proj`.

Params: `{"bert": BertModel params, "pooler": {"dense": ...}, "classifier": ...}` (names follow HF, so import /
export in `jdr.models.cross_encoder_hf` is a rename). `score` is the one pure function training and inference
both call; `join_pairs` builds pair tokens on device from the separately tokenised query and passage arrays of a
training batch (the train step's input), `score_texts` tokenises pairs as HF does (longest-first truncation) and
scores them over every local device in length buckets, like `jdr.models.inference` embeds texts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jdr.models.bert import BertConfig, BertModel
from jdr.models.cpu_options import inference_compiler_options
from jdr.models.dropout import Dropout
from jdr.models.encoder import DTYPES
from jdr.models.tokenize import _truncating, bucket_length, pad_id, pad_ragged, ragged

HEADS = ("bert", "roberta")


@dataclasses.dataclass(frozen=True)
class CrossEncoderSpec:
    """Everything static about a cross-encoder (hashable: a static jit argument). `max_length`: tokens of a whole
    pair, specials included, as the tokenizer's pair encoding truncates it (inference); `head`: "bert" | "roberta"
    (see the module docstring); `dtype`: compute dtype. `query_max_length` / `passage_max_length`: the budgets of
    the separately tokenised queries and passages a training batch joins (`join_pairs`: pairs of up to
    q + p - 1 tokens); default 64 and the rest of `max_length`."""

    bert: BertConfig
    max_length: int = 512
    model_type: str = "bert"
    head: str = "bert"
    dtype: str = "float32"
    query_max_length: int | None = None
    passage_max_length: int | None = None
    # Text put before each query / passage when the training source tokenises them (model.query_prefix /
    # passage_prefix, as for a bi-encoder); empty unless configured.
    query_prefix: str = ""
    passage_prefix: str = ""

    def __post_init__(self):
        if self.query_max_length is None:
            object.__setattr__(self, "query_max_length", min(64, self.max_length // 2))
        if self.passage_max_length is None:
            object.__setattr__(self, "passage_max_length", self.max_length - self.query_max_length + 1)
        if (
            self.query_max_length < 2
            or self.passage_max_length < 2
            or self.query_max_length + self.passage_max_length - 1 > self.bert.max_length
        ):
            raise ValueError(
                f"cross-encoder query_max_length {self.query_max_length} + passage_max_length "
                f"{self.passage_max_length} - 1 exceeds the {self.bert.max_length} positions (each >= 2)"
            )
        if self.head not in HEADS:
            raise ValueError(f"cross-encoder head must be one of {HEADS}, got {self.head!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 3 <= self.max_length <= self.bert.max_length:
            raise ValueError(
                f"cross-encoder max_length {self.max_length} is outside [3, {self.bert.max_length}] "
                "(position table size)"
            )

    def module(self) -> CrossEncoderModel:
        return CrossEncoderModel(dataclasses.replace(self.bert, add_pooler=False), self.head, DTYPES[self.dtype])


class CrossEncoderModel(nn.Module):
    """`apply({"params": p}, input_ids[B,L], attention_mask[B,L], token_type_ids[B,L]) -> logits[B]` float32."""

    config: BertConfig
    head: str = "bert"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool = True):
        c = self.config
        hidden = BertModel(c, self.dtype, name="bert")(input_ids, attention_mask, token_type_ids, deterministic)
        x = hidden[:, 0]
        if self.head == "bert":  # BertForSequenceClassification: pooler, dropout, classifier
            x = jnp.tanh(_Pooler(c.hidden_size, name="pooler")(x))
            x = Dropout(c.hidden_dropout_prob)(x, deterministic)
            logits = nn.Dense(1, name="classifier")(x)
        else:  # RobertaClassificationHead
            x = Dropout(c.hidden_dropout_prob)(x, deterministic)
            logits = _RobertaHead(c.hidden_size, c.hidden_dropout_prob, name="classifier")(x, deterministic)
        return logits[:, 0].astype(jnp.float32)


class _Pooler(nn.Module):
    """`pooler/dense` (HF `bert.pooler.dense`); the tanh is applied by the caller."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, name="dense")(x)


class _RobertaHead(nn.Module):
    """`classifier/{dense, out_proj}`: Dense + tanh, dropout, Dense(1)."""

    features: int
    dropout: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        x = jnp.tanh(nn.Dense(self.features, name="dense")(x))
        x = Dropout(self.dropout)(x, deterministic)
        return nn.Dense(1, name="out_proj")(x)


def init_params(spec: CrossEncoderSpec, rng: jax.Array) -> dict:
    """Random-init cross-encoder params (float32)."""
    ids = jnp.zeros((1, 3), jnp.int32)
    return spec.module().init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids))["params"]


def init_head(spec: CrossEncoderSpec, rng: jax.Array, *, std: float = 0.02) -> dict:
    """A fresh head (everything but `bert`) as HF initialises a new classification head: normal(0, std) kernels,
    zero biases. Used when a cross-encoder starts from a plain encoder checkpoint (e.g. all-MiniLM-L6-v2)."""
    shapes = jax.eval_shape(lambda: init_params(spec, rng))
    keys = iter(jax.random.split(rng, 8))

    def fill(path, s):
        if path[-1].key == "bias":
            return jnp.zeros(s.shape, jnp.float32)
        return std * jax.random.normal(next(keys), s.shape, jnp.float32)

    return {k: jax.tree_util.tree_map_with_path(fill, v) for k, v in shapes.items() if k != "bert"}


def score(
    params, spec: CrossEncoderSpec, input_ids, attention_mask, token_type_ids, *, deterministic: bool = True, rng=None
):
    """Relevance logits `[B]` float32 of pair tokens `[B, L]` (ids, mask, token types). Pure; jit with `spec` and
    `deterministic` static; `rng` (dropout key) is required when `deterministic=False`."""
    if not deterministic and rng is None:
        raise ValueError("score: deterministic=False needs an rng for dropout")
    rngs = {} if deterministic else {"dropout": rng}
    return spec.module().apply(
        {"params": params}, input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
    )


def join_pairs(query_ids, query_mask, passage_ids, passage_mask, *, sep_id: int | None = None):
    """Pair tokens from separately tokenised, right-padded queries `[B, Lq]` and passages `[B*G, Lp]` (each with
    its own specials: `[CLS] q [SEP]`, `[CLS] p [SEP]`) -> `(ids, mask, token_types)` `[B*G, Lq+Lp-1]`.

    BERT's pair template `[CLS] q [SEP] p [SEP]` is the query's tokens, then the passage's without its leading
    `[CLS]`; token type 1 from the passage on. With `sep_id` (RoBERTa, `<s> q </s></s> p </s>`) the passage's
    leading `<s>` is replaced by `sep_id` instead of dropped, and the types stay 0 (RoBERTa has one type).
    Runs inside jit: a gather per row, no Python loop; rows sum their two lengths, then padding.
    """
    b, lq = query_ids.shape
    n, lp = passage_ids.shape
    group = n // b
    q_ids = jnp.repeat(query_ids, group, axis=0)
    q_len = jnp.repeat(jnp.sum(query_mask, axis=1), group, axis=0)[:, None]
    p_len = jnp.sum(passage_mask, axis=1)[:, None]
    keep_first = sep_id is not None
    p_tokens = passage_ids if not keep_first else passage_ids.at[:, 0].set(sep_id)
    drop = 0 if keep_first else 1  # passage tokens skipped at its start
    length = lq + lp - drop
    t = jnp.arange(length)[None, :]
    in_query = t < q_len
    p_pos = t - q_len + drop
    in_passage = ~in_query & (p_pos < p_len)
    ids = jnp.where(
        in_query,
        jnp.take_along_axis(q_ids, jnp.clip(t, 0, lq - 1), axis=1),
        jnp.take_along_axis(p_tokens, jnp.clip(p_pos, 0, lp - 1), axis=1),
    )
    mask = in_query | in_passage
    ids = jnp.where(mask, ids, 0).astype(jnp.int32)
    types = (in_passage & (sep_id is None)).astype(jnp.int32)
    return ids, mask.astype(jnp.int32), types


def pair_tokens(tokenizer, queries: Sequence[str], passages: Sequence[str], max_length: int):
    """HF's pair encoding (`tokenizer(q, p, truncation=True, max_length=...)`: longest-first truncation, the
    tokenizer's own pair template) -> ragged `(ids, type_ids, offsets)`."""
    if len(queries) != len(passages):
        raise ValueError(f"pair_tokens: {len(queries)} queries but {len(passages)} passages")
    enc = _truncating(tokenizer, max_length).encode_batch(list(zip(queries, passages)))
    ids, offsets = ragged([e.ids for e in enc])
    types, _ = ragged([e.type_ids for e in enc])
    return ids, types, offsets


@functools.cache
def _compiled(devices: tuple, spec: CrossEncoderSpec):
    """One jitted scorer per (devices, spec) for the process: params replicated, rows sharded (no collectives)."""
    mesh = Mesh(np.asarray(devices), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def run(params, ids, mask, types):
        return score(params, spec, ids, mask, types)

    options = inference_compiler_options(spec.dtype)  # float32 on CPU: Eigen GEMMs (jdr/models/cpu_options.py)
    jitted = jax.jit(run, in_shardings=(replicated, rows, rows, rows), out_shardings=rows, compiler_options=options)
    return jitted, replicated, rows


def score_token_pairs(
    params,
    spec: CrossEncoderSpec,
    ids: np.ndarray,
    types: np.ndarray,
    offsets: np.ndarray,
    *,
    pad_token_id: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    devices=None,
    desc: str = "score",
) -> np.ndarray:
    """Logits `[N]` float32 of N tokenised pairs (ragged, `pair_tokens`' layout), in input order. Longest first,
    each batch padded to its `bucket_length` and to `batch_size` rows (a multiple of the device count), split over
    `devices` (default: all local devices); the next batch is dispatched before the previous one is fetched."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.diff(offsets)
    out = np.zeros(len(lengths), np.float32)
    if not len(lengths):
        return out
    if lengths.max() > spec.max_length:
        raise ValueError(f"pair {int(lengths.argmax())} has {int(lengths.max())} tokens, more than {spec.max_length}")
    devices = tuple(devices or jax.local_devices())
    per_batch = -(-batch_size // len(devices)) * len(devices)
    fn, replicated, sharded = _compiled(devices, spec)
    params = jax.device_put(params, replicated)
    order = np.argsort(-lengths, kind="stable")
    pending = None
    for start in tqdm(range(0, len(order), per_batch), disable=not progress, desc=desc, unit="batch"):
        rows = order[start : start + per_batch]
        length = bucket_length(int(lengths[rows[0]]), spec.max_length)
        tok, mask = pad_ragged(ids, offsets, rows, length, pad_token_id, n_rows=per_batch)
        typ, _ = pad_ragged(types, offsets, rows, length, 0, n_rows=per_batch)
        logits = fn(params, *jax.device_put((tok, mask, typ), sharded))
        if pending is not None:
            out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
        pending = (rows, logits)
    out[pending[0]] = np.asarray(pending[1])[: len(pending[0])]
    return out


def score_texts(
    params,
    spec: CrossEncoderSpec,
    tokenizer,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    devices=None,
    desc: str = "score",
) -> np.ndarray:
    """Logits `[N]` of the pairs `(queries[i], passages[i])`: `pair_tokens`, then `score_token_pairs`."""
    ids, types, offsets = pair_tokens(tokenizer, queries, passages, max_length or spec.max_length)
    return score_token_pairs(
        params,
        spec,
        ids,
        types,
        offsets,
        pad_token_id=pad_id(tokenizer),
        batch_size=batch_size,
        progress=progress,
        devices=devices,
        desc=desc,
    )
