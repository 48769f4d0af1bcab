"""The cross-encoder model: HF import / export, pair tokens built on device equal the tokenizer's, bucketed scoring
over devices, and parity with sentence-transformers' CrossEncoder (skipped when it is not installed)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdr.errors import DataError
from jdr.models.cross_encoder import join_pairs, pair_tokens, score, score_texts
from jdr.models.cross_encoder_hf import export_cross_encoder, is_cross_encoder, load_cross_encoder
from jdr.models.testing import write_tiny_model
from jdr.models.tokenize import pad_id, tokenize

QUERIES = ["cancer risk in patients", "virus infection of cells", "gene expression", "drug therapy"]
PASSAGES = [
    "the tumor growth factor was increased in cancer patients with risk",
    "the virus infection of human cells",
    "dna and rna expression levels were associated",
    "clinical treatment with the drug was not associated with the immune response of mice",
]


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    """A tiny random cross-encoder written as HF BertForSequenceClassification (via jdr's own export)."""
    root = tmp_path_factory.mktemp("ce")
    enc = write_tiny_model(root / "encoder", max_position_embeddings=64)
    params, spec, tok = load_cross_encoder(enc, seed=3)
    params["classifier"]["bias"] = params["classifier"]["bias"] + 0.5  # a head away from zero
    out = export_cross_encoder(params, spec, enc, root / "ce")
    return out, params, spec, tok


def test_plain_encoder_gets_a_fresh_head_and_keeps_its_pooler(tiny_ce, tmp_path):
    d, params, spec, _ = tiny_ce
    assert set(params) == {"bert", "pooler", "classifier"}
    assert params["classifier"]["kernel"].shape == (spec.bert.hidden_size, 1)
    assert is_cross_encoder(d) and not is_cross_encoder(d.parent / "encoder")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["num_labels"] == 1
    assert json.loads((d / "tokenizer_config.json").read_text())["model_max_length"] == spec.max_length


def test_export_round_trip_is_bit_identical(tiny_ce):
    d, params, spec, _ = tiny_ce
    again, spec2, _ = load_cross_encoder(d)
    assert spec2 == spec
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_more_than_one_label_is_one_line(tiny_ce, tmp_path):
    d = tiny_ce[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in d.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b"}
    cfg.pop("num_labels")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="num_labels is 2"):
        load_cross_encoder(bad)


def test_pairs_joined_on_device_equal_the_tokenizers_pair_encoding(tiny_ce):
    _, params, spec, tok = tiny_ce
    q = tokenize(tok, QUERIES, 16)
    p = tokenize(tok, PASSAGES, 40)
    ids, mask, types = join_pairs(
        jnp.asarray(q.input_ids), jnp.asarray(q.attention_mask), jnp.asarray(p.input_ids), jnp.asarray(p.attention_mask)
    )
    ref_ids, ref_types, offsets = pair_tokens(tok, QUERIES, PASSAGES, 64)
    for i in range(len(QUERIES)):
        n = int(mask[i].sum())
        assert n == offsets[i + 1] - offsets[i]
        np.testing.assert_array_equal(np.asarray(ids[i, :n]), ref_ids[offsets[i] : offsets[i + 1]])
        np.testing.assert_array_equal(np.asarray(types[i, :n]), ref_types[offsets[i] : offsets[i + 1]])
        assert not np.asarray(mask[i, n:]).any()


def test_score_texts_over_eight_devices_equals_one_padded_batch(tiny_ce):
    _, params, spec, tok = tiny_ce
    got = score_texts(params, spec, tok, QUERIES * 3, PASSAGES * 3, batch_size=8, progress=False)
    ids, types, offsets = pair_tokens(tok, QUERIES, PASSAGES, spec.max_length)
    length = int(np.diff(offsets).max())
    pad = np.full((len(QUERIES), length), pad_id(tok), np.int32)
    typ, mask = np.zeros_like(pad), np.zeros_like(pad)
    for i in range(len(QUERIES)):
        n = offsets[i + 1] - offsets[i]
        pad[i, :n], typ[i, :n], mask[i, :n] = ids[offsets[i] : offsets[i + 1]], types[offsets[i] : offsets[i + 1]], 1
    want = np.asarray(score(params, spec, pad, mask, typ))
    np.testing.assert_allclose(got, np.tile(want, 3), atol=1e-5)
    assert len(set(np.round(want, 5))) == len(want)  # the pairs score differently: order is meaningful


def test_export_scores_like_sentence_transformers_cross_encoder(tiny_ce):
    st = pytest.importorskip("sentence_transformers")
    pytest.importorskip("torch")
    d, params, spec, tok = tiny_ce
    model = st.CrossEncoder(str(d), device="cpu")
    theirs = np.asarray(model.predict(list(zip(QUERIES, PASSAGES)), convert_to_numpy=True), np.float32)
    ours = score_texts(params, spec, tok, QUERIES, PASSAGES, progress=False)
    np.testing.assert_allclose(ours, theirs.reshape(-1), atol=1e-4)
