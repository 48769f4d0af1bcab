"""Encoders: Flax BERT, pooling, the dual-encoder `encode`, HF/sentence-transformers import/export, inference, and
`load` / `load_model`: any model reference (`minilm`, a dir, a hub name, a `jdr train` workdir)."""

from jdr.models.bert import BertConfig, BertModel
from jdr.models.encoder import EncoderSpec, encode, init_params, make_params, tower_params
from jdr.models.hf import export, find_minilm
from jdr.models.inference import encode_texts, encode_token_ids
from jdr.models.pooling import l2_normalize, pool
from jdr.models.resolve import load, load_model, model_path
from jdr.models.tokenize import Tokenized, bucket_length, tokenize

__all__ = [
    "BertConfig",
    "BertModel",
    "EncoderSpec",
    "Tokenized",
    "bucket_length",
    "encode",
    "encode_texts",
    "encode_token_ids",
    "export",
    "find_minilm",
    "init_params",
    "l2_normalize",
    "load",
    "load_model",
    "make_params",
    "model_path",
    "pool",
    "tokenize",
    "tower_params",
]
