"""BERT/RoBERTa encoder in Flax linen, with parameter names that mirror Hugging Face so import/export is a rename."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    def from_hf_dict(cls, d: dict, *, add_pooler: bool = False) -> "BertConfig":
        """Build from a parsed HF `config.json` dict (bert or roberta/xlm-roberta); missing optional keys default."""
        model_type = d.get("model_type", "bert")
        pad = int(d.get("pad_token_id", 1 if model_type in ("roberta", "xlm-roberta") else 0) or 0)
        offset = pad + 1 if model_type in ("roberta", "xlm-roberta", "camembert") else 0
        if d.get("position_embedding_type", "absolute") != "absolute":
            kind = d["position_embedding_type"]
            raise ValueError(f"position_embedding_type: only 'absolute' is supported, got {kind!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"position_offset", "add_pooler", "pad_token_id"}
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if k not in d]
        if missing:
            raise ValueError(f"config.json: missing keys {missing}")
        kw = {k: d[k] for k in names if k in d}
        return cls(**kw, pad_token_id=pad, position_offset=offset, add_pooler=add_pooler)

    def to_hf_dict(self, model_type: str = "bert") -> dict:
        """The HF `config.json` dict for this architecture (inverse of `from_hf_dict`)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("position_offset", "add_pooler")}
        arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}.get(model_type)
        return {"architectures": [arch] if arch else [], "model_type": model_type,
                "position_embedding_type": "absolute", **d}


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout: [B,L] ids -> [B,L,H]."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        c = self.config
        positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None, :] + c.position_offset
        x = (
            nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
            + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
            + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids)
        )
        x = _layer_norm(c, "LayerNorm")(x)
        return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


def _layer_norm(c: BertConfig, name: str) -> nn.LayerNorm:
    # float32 LayerNorm with the two-pass variance, as torch computes it (the fast form loses ~1e-5 parity).
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=jnp.float32, use_fast_variance=False, name=name)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention; padded keys get a large negative score. [B,L,H] -> [B,L,H]."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def project(name):
            y = nn.Dense(c.hidden_size, dtype=self.dtype, name=name)(x)
            return y.reshape(y.shape[:2] + (heads, head_dim))

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
        probs = jax.nn.softmax(scores + mask_bias, axis=-1)
        probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return out.reshape(out.shape[:2] + (c.hidden_size,))


class BertResidual(nn.Module):
    """Dense, dropout, residual add, LayerNorm (post-LN): HF's BertSelfOutput / BertOutput."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        c = self.config
        x = nn.Dense(c.hidden_size, dtype=self.dtype, name="dense")(x)
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
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
        return _ACTIVATIONS[c.hidden_act](nn.Dense(c.intermediate_size, dtype=self.dtype, name="dense")(x))


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
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        # Additive key mask, [B,1,1,L]; finfo.min as HF uses, added in float32.
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        x = BertEncoder(self.config, self.dtype, name="encoder")(x, mask_bias, deterministic)
        if self.config.add_pooler and self.is_initializing():
            # Only to create `pooler/dense` params at init; the encoder never uses the pooled output.
            BertPooler(self.config, name="pooler")(x)
        return x.astype(jnp.float32)
