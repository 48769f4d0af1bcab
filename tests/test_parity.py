"""Parity of the JAX encoder with sentence-transformers on the real all-MiniLM-L6-v2 (reference embeddings on disk)."""

import dataclasses
import json

import numpy as np
import pytest

from jdr.models import encode_texts, export, load


@pytest.fixture(scope="module")
def reference(reference_dir):
    rows = [json.loads(line) for line in (reference_dir / "minilm_texts.jsonl").read_text().splitlines() if line]
    assert [r["_id"] for r in rows] == [f"t{i}" for i in range(len(rows))]
    return [r["text"] for r in rows], np.load(reference_dir / "minilm_embeddings.npy")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load(minilm_dir)


@pytest.fixture(scope="module")
def minilm_f32(minilm, reference):
    params, spec, tok = minilm
    return encode_texts(params, spec, tok, reference[0], batch_size=32, progress=False)


def test_minilm_settings_come_from_sentence_transformers_files(minilm):
    _, spec, _ = minilm
    # 256 from sentence_bert_config.json, not the 128 that tokenizer.json truncates at.
    assert (spec.pooling, spec.normalize, spec.query_max_length, spec.passage_max_length) == ("mean", True, 256, 256)
    assert spec.bert.add_pooler  # pooler.* tensors consumed, so export writes them back


@pytest.mark.slow
def test_minilm_float32_matches_sentence_transformers(minilm_f32, reference):
    texts, ref = reference
    assert minilm_f32.shape == ref.shape == (130, 384)
    diff = float(np.abs(minilm_f32 - ref).max())
    print(f"all-MiniLM-L6-v2 float32 max abs diff vs sentence-transformers: {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_minilm_bfloat16_close(minilm, reference):
    params, spec, tok = minilm
    texts, ref = reference
    e16 = encode_texts(params, dataclasses.replace(spec, dtype="bfloat16"), tok, texts, batch_size=32, progress=False)
    cos = np.sum(e16 * ref, axis=1)
    print(f"all-MiniLM-L6-v2 bfloat16 min cosine vs reference: {cos.min():.5f}")
    assert cos.min() >= 0.99


@pytest.mark.slow
def test_exported_minilm_loads_in_sentence_transformers(minilm, minilm_f32, reference, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    params, spec, tok = minilm
    out = export(params, spec, tok, tmp_path / "minilm")
    model = st.SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 256
    got = model.encode(reference[0], batch_size=32, convert_to_numpy=True)
    assert float(np.abs(got - minilm_f32).max()) <= 1e-4
