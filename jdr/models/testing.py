"""Tiny random-weight BERT model directories for tests (HF + sentence-transformers layout, real WordPiece tokenizer)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from jdr.io import atomic_dir
from jdr.models.hf import write_st_files

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Enough words that SciFact-like test sentences mostly tokenise to real ids, not [UNK].
DEFAULT_WORDS = (
    "the of and a to in is was for with that on are by as at from be this it an or not were which "
    "has have been but their more than can these also between after cell cells protein gene genes "
    "expression patients disease cancer risk treatment study results increased associated human "
    "mice blood brain virus infection tumor clinical effect activity level levels dna rna immune "
    "response therapy drug growth factor receptor"
).split()


def tiny_vocab(words=None) -> list[str]:
    """The vocab list (index = token id): specials, a few punctuation marks, letters/digits, ##letters, words."""
    words = DEFAULT_WORDS if words is None else list(words)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = SPECIAL_TOKENS + list(".,;:!?()-%/'\"") + chars + [f"##{c}" for c in chars]
    seen = set(vocab)
    for w in words:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def build_wordpiece_tokenizer(vocab: list[str], max_length: int) -> Tokenizer:
    """A BERT-uncased-style `tokenizers.Tokenizer` over `vocab`: lowercase, [CLS] $A [SEP], truncation at max_length."""
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.enable_truncation(max_length=max_length)
    return tok


def _random_hf_tensors(rng: np.random.Generator, cfg: dict, with_pooler: bool) -> dict[str, np.ndarray]:
    """HF BertModel tensor names and layouts (Linear weights [out, in]), as in all-MiniLM-L6-v2's model.safetensors."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ln(prefix, t):
        # LayerNorm params away from (1, 0) so a transposed/misnamed import would show up in tests.
        t[f"{prefix}.weight"] = (1.0 + rng.standard_normal(h) * 0.1).astype(np.float32)
        t[f"{prefix}.bias"] = normal(h)

    def dense(prefix, t, n_out, n_in):
        t[f"{prefix}.weight"] = normal(n_out, n_in)
        t[f"{prefix}.bias"] = normal(n_out)

    t: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": normal(cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": normal(cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": normal(cfg["type_vocab_size"], h),
        "embeddings.position_ids": np.arange(cfg["max_position_embeddings"], dtype=np.int64)[None],
    }
    ln("embeddings.LayerNorm", t)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        for name in ("query", "key", "value"):
            dense(f"{p}.attention.self.{name}", t, h, h)
        dense(f"{p}.attention.output.dense", t, h, h)
        ln(f"{p}.attention.output.LayerNorm", t)
        dense(f"{p}.intermediate.dense", t, i, h)
        dense(f"{p}.output.dense", t, h, i)
        ln(f"{p}.output.LayerNorm", t)
    if with_pooler:
        dense("pooler.dense", t, h, h)
    return t


def write_tiny_model(
    path: str | os.PathLike,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    vocab_words=None,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int = 32,
    with_pooler: bool = True,
    max_position_embeddings: int = 64,
) -> Path:
    """Write a complete random-weight BERT model dir at `path` that `jdr.models.load` (and sentence-transformers) read.

    Files: config.json, model.safetensors (HF names, float32, with `embeddings.position_ids` and optionally
    `pooler.*` like real checkpoints), tokenizer.json (WordPiece over `tiny_vocab(vocab_words)`),
    tokenizer_config.json, special_tokens_map.json, vocab.txt, modules.json, 1_Pooling/config.json,
    sentence_bert_config.json. Returns `Path(path)`.
    """
    if pooling not in ("cls", "mean", "max"):
        raise ValueError(f"pooling must be cls|mean|max, got {pooling!r}")
    path = Path(path)
    vocab = tiny_vocab(vocab_words)
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "initializer_range": 0.02,
    }
    tensors = _random_hf_tensors(np.random.default_rng(seed), cfg, with_pooler)
    tok = build_wordpiece_tokenizer(vocab, max_seq_length)
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
        specials = dict(zip(["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"], SPECIAL_TOKENS))
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials))
        (tmp / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512, **specials})
        )
        write_st_files(tmp, hidden_size, pooling, normalize, max_seq_length)
    return path
