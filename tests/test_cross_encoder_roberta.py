"""The RoBERTa cross-encoder head against the real thing: a tiny random `transformers.RobertaForSequenceClassification`
and a byte-level BPE tokenizer, both built offline here, checked for logits (torch), tokens (the HF tokenizer's
`<s> q </s></s> p </s>` pair encoding) and the export (sentence-transformers' CrossEncoder, re-import).

RoBERTa differs from BERT where a port goes wrong silently: positions start at padding_idx + 1 = 2, one token
type, weights under `roberta.`, a `classifier.dense` + `classifier.out_proj` head and no pooler."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from test_cross_encoder import PASSAGES, QUERIES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jdr.models.cross_encoder import join_pairs, pair_tokens, score_texts
from jdr.models.cross_encoder_hf import export_cross_encoder, load_cross_encoder
from jdr.models.tokenize import tokenize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids: <s> 0, <pad> 1, </s> 2
MAX_LENGTH = 64  # the pair budget (tokenizer_config model_max_length), = the 66-row position table minus 2
# A pair longer than MAX_LENGTH: the tokenizer truncates it (longest first), so do jdr and torch.
LONG_QUERY = "which drug therapy changed the immune response of patients with cancer"
LONG_PASSAGE = " ".join(PASSAGES * 3)
ALL_QUERIES = QUERIES + [LONG_QUERY]
ALL_PASSAGES = PASSAGES + [LONG_PASSAGE]


def _bpe_tokenizer() -> Tokenizer:
    """A RoBERTa-style byte-level BPE, trained in-process on the test sentences (so words are few tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator((QUERIES + PASSAGES + [LONG_QUERY]) * 10, trainer)
    assert [tok.token_to_id(t) for t in SPECIALS] == list(range(len(SPECIALS)))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return tok


def _random_roberta(vocab_size: int):
    """A tiny `RobertaForSequenceClassification(num_labels=1)` in eval mode with every weight random: LayerNorms
    away from (1, 0) and wide inits, so a misplaced position, type or tensor moves the logits well past 1e-4."""
    cfg = transformers.RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = transformers.RobertaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """`(dir, torch model, HF tokenizer)`: the model's `save_pretrained` plus tokenizer.json, vocab.json, merges.txt
    and a tokenizer_config.json, as a RoBERTa reranker dir on the hub looks."""
    d = tmp_path_factory.mktemp("roberta_ce") / "model"
    tok = _bpe_tokenizer()
    model = _random_roberta(tok.get_vocab_size())
    model.save_pretrained(d, safe_serialization=True)
    tok.save(str(d / "tokenizer.json"))
    tok.model.save(str(d))  # vocab.json + merges.txt: what a slow RobertaTokenizer reads
    specials = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), SPECIALS))
    specials.update(cls_token="<s>", sep_token="</s>")
    (d / "special_tokens_map.json").write_text(json.dumps(specials))
    tok_cfg = {"tokenizer_class": "RobertaTokenizerFast", "model_max_length": MAX_LENGTH, "add_prefix_space": False}
    (d / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, **specials}))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d))
    return d, model, hf_tok


def _hf_pairs(hf_tok, queries, passages):
    return hf_tok(list(queries), list(passages), truncation=True, max_length=MAX_LENGTH)


def test_roberta_dir_scores_like_the_torch_model_including_a_truncated_pair(roberta_dir):
    d, model, hf_tok = roberta_dir
    params, spec, tok = load_cross_encoder(d)
    assert spec.head == "roberta" and spec.model_type == "roberta" and set(params) == {"bert", "classifier"}
    assert spec.bert.position_offset == 2 and spec.bert.type_vocab_size == 1 and spec.max_length == MAX_LENGTH
    enc = hf_tok(ALL_QUERIES, ALL_PASSAGES, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    assert int(enc["attention_mask"][-1].sum()) == MAX_LENGTH  # the long pair really is cut
    with torch.no_grad():
        theirs = model(**enc).logits[:, 0].numpy()
    ours = score_texts(params, spec, tok, ALL_QUERIES, ALL_PASSAGES, batch_size=8, progress=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert len(set(np.round(theirs, 3))) == len(theirs)  # the pairs score apart: a swap or a constant would show


def test_roberta_pair_tokens_equal_the_hf_tokenizers_pair_encoding_with_no_token_types(roberta_dir):
    d, _, hf_tok = roberta_dir
    _, spec, tok = load_cross_encoder(d)
    ids, types, offsets = pair_tokens(tok, ALL_QUERIES, ALL_PASSAGES, spec.max_length)
    ref = _hf_pairs(hf_tok, ALL_QUERIES, ALL_PASSAGES)
    assert "token_type_ids" not in ref  # RoBERTa's tokenizer gives the model no token types
    for i, want in enumerate(ref["input_ids"]):
        got = ids[offsets[i] : offsets[i + 1]].tolist()
        assert got == want
        q_len = len(hf_tok(ALL_QUERIES[i])["input_ids"])  # <s> q </s>
        assert got[0] == 0 and got[q_len - 1 : q_len + 1] == [2, 2] and got[-1] == 2  # <s> q </s></s> p </s>
    assert len(ref["input_ids"][-1]) == MAX_LENGTH
    assert not types.any()  # one token type: everything is type 0, as HF's RobertaEmbeddings defaults to


def test_roberta_pairs_joined_on_device_with_sep_id_equal_the_hf_tokenizers_pair_encoding(roberta_dir):
    """What the training step feeds the model (`join_pairs(..., sep_id=</s>)` of separately tokenised queries and
    passages) is the tokenizer's own pair encoding when neither side is cut."""
    d, _, hf_tok = roberta_dir
    _, _, tok = load_cross_encoder(d)
    q = tokenize(tok, QUERIES, 16)
    p = tokenize(tok, PASSAGES, MAX_LENGTH - 16)
    ids, mask, types = join_pairs(
        jnp.asarray(q.input_ids),
        jnp.asarray(q.attention_mask),
        jnp.asarray(p.input_ids),
        jnp.asarray(p.attention_mask),
        sep_id=tok.token_to_id("</s>"),
    )
    ref = _hf_pairs(hf_tok, QUERIES, PASSAGES)["input_ids"]
    for i, want in enumerate(ref):
        n = int(mask[i].sum())
        assert np.asarray(ids[i, :n]).tolist() == want
        assert not np.asarray(mask[i, n:]).any()
    assert not np.asarray(types).any()


def test_roberta_export_writes_the_hf_tensors_back_and_scores_like_sentence_transformers(roberta_dir, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    d, _, _ = roberta_dir
    params, spec, tok = load_cross_encoder(d)
    out = export_cross_encoder(params, spec, d, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RobertaForSequenceClassification"]
    # The weights go back under HF's own names (`roberta.` prefix, classifier.dense / out_proj), bit for bit.
    original, exported = load_file(str(d / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(exported) == {k for k in original if not k.endswith(("position_ids", "token_type_ids"))}
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    model = st.CrossEncoder(str(out), device="cpu")
    pairs = list(zip(ALL_QUERIES, ALL_PASSAGES))
    theirs = np.asarray(model.predict(pairs, convert_to_numpy=True), np.float32).reshape(-1)
    ours = score_texts(params, spec, tok, ALL_QUERIES, ALL_PASSAGES, progress=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    again, spec2, _ = load_cross_encoder(out)
    assert spec2 == spec
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
