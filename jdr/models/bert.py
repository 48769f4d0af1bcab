"""BERT/RoBERTa encoder in Flax linen, with parameter names that mirror Hugging Face so import/export is a rename."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdr.models.dropout import Dropout
from jdr.models.mixed_dot import mixed_dot_general

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture hyper-parameters; field names follow HF `config.json`. Frozen so it hashes as a static jit arg."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    # Position ids start here: 0 for BERT, pad_token_id + 1 for RoBERTa (right padding assumed).
    position_offset: int = 0
    # Whether the checkpoint carries `pooler.dense` (kept so export writes it back; unused by the encoder).
    add_pooler: bool = False

    def __post_init__(self):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act: unsupported {self.hidden_act!r} (known: {sorted(_ACTIVATIONS)})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )

    @property
    def max_length(self) -> int:
        """The longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf_dict(cls, d: dict, *, add_pooler: bool = False) -> BertConfig:
        """Build from a parsed HF `config.json` dict (bert or roberta/xlm-roberta); missing optional keys default."""
        model_type = d.get("model_type", "bert")
        pad = int(d.get("pad_token_id", 1 if model_type in ("roberta", "xlm-roberta") else 0) or 0)
        offset = pad + 1 if model_type in ("roberta", "xlm-roberta", "camembert") else 0
        if d.get("position_embedding_type", "absolute") != "absolute":
            kind = d["position_embedding_type"]
            raise ValueError(f"position_embedding_type: only 'absolute' is supported, got {kind!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"position_offset", "add_pooler", "pad_token_id"}
        missing = [
            k
            for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            if k not in d
        ]
        if missing:
            raise ValueError(f"config.json: missing keys {missing}")
        kw = {k: d[k] for k in names if k in d}
        return cls(**kw, pad_token_id=pad, position_offset=offset, add_pooler=add_pooler)

    def to_hf_dict(self, model_type: str = "bert") -> dict:
        """The HF `config.json` dict for this architecture (inverse of `from_hf_dict`)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("position_offset", "add_pooler")}
        arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}.get(model_type)
        return {
            "architectures": [arch] if arch else [],
            "model_type": model_type,
            "position_embedding_type": "absolute",
            **d,
        }


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout: [B,L] ids -> [B,L,H]."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool, position_ids=None):
        c = self.config
        if position_ids is None:  # one text per row; packed rows (jdr.models.packing) restart at each text
            position_ids = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None, :]
        positions = position_ids + c.position_offset
        x = (
            nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
            + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
            + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids)
        )
        x = _layer_norm(c, "LayerNorm")(x)
        return Dropout(c.hidden_dropout_prob)(x, deterministic)


def _dot_general(dtype):
    """The dot of every matmul computing in `dtype`: float32 accumulation and output.

    With bfloat16 inputs a float32-accumulating dot is what XLA:CPU maps onto AMX/AVX-512-BF16 (a bf16-output
    dot is upcast to a float32 one and runs ~2.5x slower), and it is the more accurate of the two anywhere.
    Below float32 it is `mixed_dot_general`, whose backward dots are bfloat16 too (plain autodiff would run them
    in float32: jdr/models/mixed_dot.py); float32 keeps `lax.dot_general`.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
    return mixed_dot_general


def _dense(features: int, dtype, name: str) -> nn.Dense:
    """`nn.Dense` computing in `dtype` and accumulating in float32 (its output is float32)."""
    return nn.Dense(features, dtype=dtype, dot_general=_dot_general(dtype), name=name)


def _layer_norm(c: BertConfig, name: str) -> nn.LayerNorm:
    # float32 LayerNorm with the two-pass variance, as torch computes it (the fast form loses ~1e-5 parity).
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=jnp.float32, use_fast_variance=False, name=name)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention; padded keys get a large negative score. [B,L,H] -> [B,L,H].

    Heads go first ([B, heads, L, head_dim]) before the two batched dots: XLA:CPU lays out a forward-only
    `bqhd,bkhd->bhqk` einsum badly (the probabilities x values dot comes out transposed and is ~3x slower), and
    with heads first both dots are plain batched matmuls in every graph. The 1/sqrt(head_dim) scale is applied
    to the queries ([B,L,H]) instead of the scores ([B,heads,L,L]), which XLA would otherwise materialise.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def project(name):  # [B,L,H] -> [B,heads,L,head_dim] in the compute dtype
            y = _dense(c.hidden_size, self.dtype, name)(x)
            return y.reshape(y.shape[:2] + (heads, head_dim)).transpose(0, 2, 1, 3).astype(self.dtype)

        q = project("query") * jnp.asarray(1.0 / head_dim**0.5, self.dtype)
        k, v = project("key"), project("value")
        if jnp.dtype(self.dtype) == jnp.float32:
            scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        else:  # the same contraction, with bfloat16 backward dots (jdr/models/mixed_dot.py)
            scores = mixed_dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1))))
        probs = jax.nn.softmax(scores + mask_bias, axis=-1)
        probs = Dropout(c.attention_probs_dropout_prob)(probs, deterministic).astype(self.dtype)
        if jnp.dtype(self.dtype) == jnp.float32:
            out = jnp.einsum("bhqk,bhkd->bhqd", probs, v, preferred_element_type=jnp.float32)
        else:
            out = mixed_dot_general(probs, v, (((3,), (2,)), ((0, 1), (0, 1))))
        return out.transpose(0, 2, 1, 3).reshape(x.shape[:2] + (c.hidden_size,))


class BertResidual(nn.Module):
    """Dense, dropout, residual add, LayerNorm (post-LN): HF's BertSelfOutput / BertOutput."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        c = self.config
        x = _dense(c.hidden_size, self.dtype, "dense")(x)
        x = Dropout(c.hidden_dropout_prob)(x, deterministic)
        return _layer_norm(c, "LayerNorm")(x.astype(jnp.float32) + residual.astype(jnp.float32))


class BertAttention(nn.Module):
    """`attention/{self, output}` of one layer."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        y = BertSelfAttention(self.config, self.dtype, name="self")(x, mask_bias, deterministic)
        return BertResidual(self.config, self.dtype, name="output")(y, x, deterministic)


class BertIntermediate(nn.Module):
    """`intermediate/dense` followed by the activation: [B,L,H] -> [B,L,I]."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        return _ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, self.dtype, "dense")(x))


class BertLayer(nn.Module):
    """One transformer block: attention, then feed-forward, each with residual + post-LayerNorm."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        x = BertAttention(self.config, self.dtype, name="attention")(x, mask_bias, deterministic)
        y = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
        return BertResidual(self.config, self.dtype, name="output")(y, x, deterministic)


class BertEncoder(nn.Module):
    """The stack `encoder/layer_{i}`."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask_bias, deterministic)
        return x


class BertPooler(nn.Module):
    """`pooler/dense` + tanh on the first token (HF's next-sentence pooler): [B,L,H] -> [B,H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.config.hidden_size, name="dense")(x[:, 0]))


class BertModel(nn.Module):
    """BERT without heads: `apply({"params": p}, input_ids[B,L], attention_mask[B,L]) -> hidden[B,L,H]` (float32).

    `dtype` is the compute dtype (bfloat16 for mixed precision); params stay float32 and softmax/LayerNorm run in
    float32. Dropout is active when `deterministic=False` (pass `rngs={"dropout": key}`).
    Packed rows (several texts per row, jdr.models.packing) pass `segment_ids[B,L]` (1, 2, ... per text, 0 for
    padding; a token attends only to its own text) and `position_ids[B,L]` (restarting at 0 for each text).
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        deterministic: bool = True,
        position_ids=None,
        segment_ids=None,
    ):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if segment_ids is None:
            # Additive key mask, [B,1,1,L]; finfo.min as HF uses, added in float32.
            mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        else:  # block-diagonal [B,1,L,L]: same text only (the same finfo.min, so masked keys weigh exactly 0)
            same = (segment_ids[:, None, :, None] == segment_ids[:, None, None, :]) & (
                segment_ids[:, None, None, :] > 0
            )
            mask_bias = jnp.where(same, 0.0, jnp.finfo(jnp.float32).min)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, deterministic, position_ids
        )
        x = BertEncoder(self.config, self.dtype, name="encoder")(x, mask_bias, deterministic)
        if self.config.add_pooler and self.is_initializing():
            # Only to create `pooler/dense` params at init; the encoder never uses the pooled output.
            BertPooler(self.config, name="pooler")(x)
        return x.astype(jnp.float32)
