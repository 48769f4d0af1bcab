"""Sequence packing for inference (jdr.models.packing): the plan, the packed arrays, and embeddings equal to the
unpacked ones for every pooling mode, dense head, RoBERTa offsets and device count."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jdr.cli import main
from jdr.models import encode_texts, encode_token_ids, load
from jdr.models.packing import packed_rows, packing_cost, plan_packing, texts_by_row
from jdr.models.testing import write_tiny_model
from jdr.models.tokenize import pad_id, ragged, token_ids

TEXTS = [
    "The protein expression in cells increased.",
    "mice",
    "",
    "Blood brain barrier and immune response to virus infection in patients with cancer risk after treatment.",
    "gene dna rna",
    "tumor growth factor receptor activity in human cells",
    "a",
    "clinical study results",
] * 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_plan_places_every_text_once_inside_its_row():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(2, 40, 200), [64, 64, 63, 1]])
    plan = plan_packing(lengths, row_length=64, max_segments=5)
    assert plan.n_rows < len(lengths) and plan.n_rows >= -(-lengths.sum() // 64)
    assert (plan.offset_of + lengths <= 64).all() and (plan.slot_of < 5).all()
    # No two texts of a row overlap, and each row's slots are 0..k-1.
    for row in range(plan.n_rows):
        texts = np.nonzero(plan.row_of == row)[0]
        spans = sorted((plan.offset_of[t], plan.offset_of[t] + lengths[t]) for t in texts)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert sorted(plan.slot_of[texts]) == list(range(len(texts)))
    with pytest.raises(ValueError, match="text 0 has 65 tokens, more than the packed row length 64"):
        plan_packing([65], 64)


def test_packed_rows_restart_positions_and_mark_segments():
    tokens, offsets = ragged([[101, 5, 102], [101, 102], [101, 7, 8, 9, 102]])
    plan = plan_packing(np.diff(offsets), row_length=8, max_segments=4)
    order, bounds = texts_by_row(plan)
    ids, seg, pos = packed_rows(tokens, offsets, plan, order, 0, plan.n_rows + 1, pad_token_id=0)
    assert ids.shape == (plan.n_rows + 1, 8) and not seg[-1].any() and not ids[-1].any()  # extra row: padding
    for t in range(3):
        r, c, n = plan.row_of[t], plan.offset_of[t], offsets[t + 1] - offsets[t]
        assert ids[r, c : c + n].tolist() == tokens[offsets[t] : offsets[t + 1]].tolist()
        assert pos[r, c : c + n].tolist() == list(range(n)) and (seg[r, c : c + n] == plan.slot_of[t] + 1).all()
    assert (seg > 0).sum() == len(tokens)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_packed_embeddings_equal_unpacked(tiny, pooling):
    params, spec, tok = tiny
    spec = dataclasses.replace(spec, pooling=pooling)
    kw = dict(tower="passage", batch_size=4, progress=False)  # several batches, the last one partly padding
    plain = encode_texts(params, spec, tok, TEXTS, **kw)
    packed = encode_texts(params, spec, tok, TEXTS, pack=True, **kw)
    np.testing.assert_allclose(packed, plain, atol=1e-5)
    assert not np.allclose(packed[0], packed[1])


def test_packed_equals_unpacked_with_dense_head_roberta_offset_and_eight_devices(tiny):
    params, spec, tok = tiny
    bert = dataclasses.replace(spec.bert, position_offset=2)  # RoBERTa-style: positions start at pad + 1
    spec = dataclasses.replace(
        spec, bert=bert, passage_max_length=bert.max_length, dense="tanh", normalize_before_dense=True
    )
    rng = np.random.default_rng(0)
    params = {
        **params,
        "dense": {"kernel": rng.standard_normal((32, 16)).astype(np.float32) * 0.3, "bias": np.zeros(16, np.float32)},
    }
    assert jax.local_device_count() == 8
    tokens, offsets = ragged(token_ids(tok, TEXTS, 48))
    kw = dict(tower="passage", pad_token_id=pad_id(tok), batch_size=8, progress=False)
    plain = encode_token_ids(params, spec, tokens, offsets, devices=jax.local_devices()[:1], **kw)
    packed = encode_token_ids(params, spec, tokens, offsets, pack=True, **kw)
    assert plain.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(packed, plain, atol=1e-5)


def test_packing_cost_counts_less_padding_for_mixed_lengths():
    lengths = np.array([256] * 10 + [20] * 90)
    cost = packing_cost(lengths, max_length=256, batch_size=8)
    assert cost["real_tokens"] == 256 * 10 + 20 * 90
    assert cost["packed_tokens"] < cost["bucketed_tokens"] and cost["packed_flops"] < cost["bucketed_flops"]
    assert cost["packed_tokens"] >= cost["real_tokens"] and cost["real_flops_alone"] < cost["packed_flops"]


def test_cli_encode_pack_writes_the_same_store(tiny, tmp_path):
    model = write_tiny_model(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    for name, extra in (("plain", []), ("packed", ["--pack"])):
        assert (
            main(
                [
                    "encode",
                    "--model",
                    str(model),
                    "--input",
                    str(corpus),
                    "--output",
                    str(tmp_path / name),
                    "--batch-size",
                    "4",
                    *extra,
                ]
            )
            == 0
        )
    np.testing.assert_allclose(
        np.load(tmp_path / "packed" / "embeddings.npy"), np.load(tmp_path / "plain" / "embeddings.npy"), atol=1e-5
    )
