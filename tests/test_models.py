"""jdr.models on a tiny random-weight BERT: shapes, masking, param trees, strict loading, export round trip."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from jdr.errors import DataError
from jdr.models import (
    BertConfig,
    bucket_length,
    encode,
    encode_texts,
    encode_token_ids,
    export,
    l2_normalize,
    load,
    pool,
    tokenize,
    tower_params,
)
from jdr.models.testing import write_tiny_model

TEXTS = [
    "The protein expression in cells increased.",
    "mice",
    "",
    "Blood brain barrier and immune response to virus infection in patients with cancer risk after treatment.",
    "gene dna rna",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load(tiny_dir)


_encode = jax.jit(encode, static_argnames=("spec", "tower", "deterministic"))


def _enc(params, spec, tok, texts, tower="query", length=None, **kw):
    t = tokenize(tok, texts, spec.max_length(tower), length=length)
    return np.asarray(_encode(params, spec, t.input_ids, t.attention_mask, tower=tower, **kw))


def _flat_np(tree):
    return {k: np.asarray(v) for k, v in flatten_dict(tree).items()}


def test_shapes_dtype_and_normalisation(tiny):
    params, spec, tok = tiny
    assert (spec.pooling, spec.normalize, spec.query_max_length) == ("mean", True, 32)
    e = _enc(params, spec, tok, TEXTS)
    assert e.shape == (len(TEXTS), 32) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(e[0], e[1])


def test_padding_does_not_change_embeddings(tiny):
    params, spec, tok = tiny
    short = _enc(params, spec, tok, TEXTS[:2], length=16)
    long = _enc(params, spec, tok, TEXTS[:2], length=32)
    np.testing.assert_allclose(short, long, atol=1e-6)
    # Garbage in padded positions must not leak in either.
    t = tokenize(tok, TEXTS[:2], 32, length=32)
    noisy = np.where(t.attention_mask > 0, t.input_ids, 7).astype(np.int32)
    noisy_emb = np.asarray(_encode(params, spec, noisy, t.attention_mask, tower="query"))
    np.testing.assert_allclose(noisy_emb, long, atol=1e-6)


def test_tokenize_overrides_tokenizer_truncation(tiny):
    _, _, tok = tiny
    long_text = " ".join(["protein"] * 100)
    t = tokenize(tok, [long_text], 48)  # the tiny tokenizer.json itself truncates at 32
    assert t.input_ids.shape == (1, 48) and t.attention_mask.sum() == 48
    assert t.input_ids.dtype == np.int32 and t.input_ids[0, -1] == tok.token_to_id("[SEP]")
    t8 = tokenize(tok, [long_text, "mice"], 8)
    assert t8.input_ids.shape == (2, 8) and t8.attention_mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        tokenize(tok, "not a list", 8)


def test_bucket_length_bounded_and_few():
    for max_length in (32, 256, 512):
        buckets = {bucket_length(n, max_length) for n in range(0, max_length + 1)}
        assert len(buckets) <= 10
        for n in range(0, max_length + 1):
            b = bucket_length(n, max_length)
            assert n <= b <= max_length
        assert max(buckets) == max_length
    assert bucket_length(600, 512) == 512
    assert [bucket_length(n, 256) for n in (1, 17, 33, 65, 129, 200)] == [16, 32, 64, 128, 192, 256]


def test_pool_modes():
    h = jnp.array([[[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]]])
    m = jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(h, m, "mean"), [[2.0, 2.0]])
    np.testing.assert_allclose(pool(h, m, "max"), [[3.0, 5.0]])
    np.testing.assert_allclose(pool(h, m, "cls"), [[1.0, 5.0]])
    np.testing.assert_allclose(l2_normalize(jnp.array([[3.0, 4.0]])), [[0.6, 0.8]])
    with pytest.raises(ValueError):
        pool(h, m, "sum")


def test_tied_and_untied_param_trees(tiny_dir):
    tied, spec_t, tok = load(tiny_dir)
    untied, spec_u, _ = load(tiny_dir, tied=False)
    assert set(tied) == {"shared"} and set(untied) == {"query", "passage"}
    assert spec_t.tied and not spec_u.tied
    q0 = _enc(untied, spec_u, tok, TEXTS, tower="query")
    np.testing.assert_array_equal(q0, _enc(untied, spec_u, tok, TEXTS, tower="passage"))
    np.testing.assert_array_equal(q0, _enc(tied, spec_t, tok, TEXTS))
    # Towers are independent arrays: changing the passage tower leaves the query tower alone.
    moved = dict(untied, passage=jax.tree.map(lambda x: x * 1.1, untied["passage"]))
    np.testing.assert_array_equal(q0, _enc(moved, spec_u, tok, TEXTS, tower="query"))
    assert not np.allclose(q0, _enc(moved, spec_u, tok, TEXTS, tower="passage"))
    with pytest.raises(ValueError):
        tower_params(untied, spec_u, "doc")


def _copy_with_tensors(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file(edit(tensors), str(dst / "model.safetensors"))
    return dst


def test_load_refuses_extra_and_missing_tensors(tiny_dir, tmp_path):
    extra = _copy_with_tensors(
        tiny_dir, tmp_path / "extra", lambda t: {**t, "encoder.layer.7.foo.weight": t["pooler.dense.bias"]}
    )
    with pytest.raises(DataError, match=r"encoder\.layer\.7\.foo\.weight"):
        load(extra)
    gone = "encoder.layer.1.output.dense.bias"
    missing = _copy_with_tensors(tiny_dir, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != gone})
    with pytest.raises(DataError, match=gone.replace(".", r"\.")) as e:
        load(missing)
    assert "\n" not in str(e.value)
    w = "encoder.layer.0.intermediate.dense.weight"
    transposed = _copy_with_tensors(tiny_dir, tmp_path / "shape", lambda t: {**t, w: t[w].T.copy()})
    with pytest.raises(DataError, match="intermediate.dense.weight"):
        load(transposed)


def test_load_accepts_bert_prefixed_names(tiny_dir, tiny, tmp_path):
    prefixed = _copy_with_tensors(tiny_dir, tmp_path / "prefixed", lambda t: {f"bert.{k}": v for k, v in t.items()})
    params, _, _ = load(prefixed)
    a, b = _flat_np(params), _flat_np(tiny[0])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_export_round_trip_is_bit_identical(tiny_dir, tiny, tmp_path):
    params, spec, tok = tiny
    out = export(params, spec, tok, tmp_path / "exported")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ):
        assert (out / name).exists(), name
    assert "sentence_transformers.models.Normalize" in (out / "modules.json").read_text()
    # HF layout: same names and shapes as the source checkpoint (minus the position_ids buffer).
    src, dst = load_file(str(tiny_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(dst) == set(src) - {"embeddings.position_ids"}
    assert all(np.array_equal(src[k], dst[k]) for k in dst)
    params2, spec2, tok2 = load(out)
    assert spec2 == spec
    a, b = _flat_np(params), _flat_np(params2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(_enc(params, spec, tok, TEXTS), _enc(params2, spec2, tok2, TEXTS))
    # Exporting from the model dir's tokenizer files works too, and re-export replaces the dir.
    out2 = export(params, spec, tiny_dir, tmp_path / "exported")
    assert (out2 / "vocab.txt").exists()
    np.testing.assert_array_equal(_enc(params, spec, tok, TEXTS), _enc(*load(out2), TEXTS))


def test_export_untied_passage_tower(tiny_dir, tmp_path):
    params, spec, tok = load(tiny_dir, tied=False)
    params = dict(params, passage=jax.tree.map(lambda x: x + 0.01, params["passage"]))
    p2, s2, t2 = load(export(params, spec, tok, tmp_path / "p", tower="passage"))
    np.testing.assert_array_equal(_enc(params, spec, tok, TEXTS, tower="passage"), _enc(p2, s2, t2, TEXTS))


def test_sentence_transformers_settings_and_plain_hf_defaults(tmp_path):
    d = write_tiny_model(tmp_path / "cls", pooling="cls", normalize=False, max_seq_length=24)
    _, spec, _ = load(d, query_max_length=16)
    assert (spec.pooling, spec.normalize, spec.query_max_length, spec.passage_max_length) == ("cls", False, 16, 24)
    for f in ("modules.json", "sentence_bert_config.json"):
        (d / f).unlink()
    shutil.rmtree(d / "1_Pooling")
    _, spec, _ = load(d)
    # Plain HF BERT: cls pooling, no normalisation, 512 capped by the (tiny) position table.
    assert (spec.pooling, spec.normalize, spec.passage_max_length) == ("cls", False, 64)
    with pytest.raises(ValueError, match="query_max_length"):
        load(d, query_max_length=65)


def test_hub_name_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        load("jdr-test-nonexistent/model")
    assert "jdr-test-nonexistent/model" in str(e.value) and "\n" not in str(e.value)


def test_dropout_only_when_not_deterministic(tiny):
    params, spec, tok = tiny
    base = _enc(params, spec, tok, TEXTS)
    np.testing.assert_array_equal(base, _enc(params, spec, tok, TEXTS, deterministic=True, rng=jax.random.key(0)))
    d0 = _enc(params, spec, tok, TEXTS, deterministic=False, rng=jax.random.key(0))
    d1 = _enc(params, spec, tok, TEXTS, deterministic=False, rng=jax.random.key(1))
    assert not np.allclose(base, d0, atol=1e-4) and not np.allclose(d0, d1, atol=1e-4)
    with pytest.raises(ValueError, match="rng"):
        _enc(params, spec, tok, TEXTS, deterministic=False)


def test_hash_dropout_mask_statistics():
    from jdr.models.dropout import Dropout, hash_bits

    shape = (64, 4, 64, 64)  # 1M elements: the keep rate's standard error is 3e-4
    keep = np.asarray(hash_bits(jax.random.key(0), shape) >= np.uint32(round(0.1 * 2**32)))
    assert abs(keep.mean() - 0.9) < 2e-3
    # Neighbours along every axis and two different keys are independent: P(both kept) = 0.81.
    for a, b in ((keep[..., 1:], keep[..., :-1]), (keep[:, :, 1:], keep[:, :, :-1]), (keep[1:], keep[:-1])):
        assert abs((a & b).mean() - 0.81) < 3e-3
    other = np.asarray(hash_bits(jax.random.key(1), shape) >= np.uint32(round(0.1 * 2**32)))
    assert abs((keep & other).mean() - 0.81) < 3e-3
    # Same key, same bits (jitted or not, any PRNG impl); the scaled output is unbiased.
    np.testing.assert_array_equal(
        np.asarray(jax.jit(hash_bits, static_argnums=1)(jax.random.key(0), shape)),
        np.asarray(hash_bits(jax.random.key(0), shape)),
    )
    assert hash_bits(jax.random.key(0, impl="rbg"), (3, 5)).shape == (3, 5)
    x = jnp.ones(shape[:3])
    y = Dropout(0.1).apply({}, x, False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.9], rtol=1e-6)
    assert abs(float(y.mean()) - 1.0) < 5e-3
    np.testing.assert_array_equal(Dropout(0.1).apply({}, x, True), x)
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.0).apply({}, x, False, rngs={"dropout": jax.random.key(3)})


def test_bfloat16_close_to_float32(tiny):
    params, spec, tok = tiny
    e32 = _enc(params, spec, tok, TEXTS)
    e16 = _enc(params, dataclasses.replace(spec, dtype="bfloat16"), tok, TEXTS)
    assert e16.dtype == np.float32
    assert np.min(np.sum(e32 * e16, axis=1)) > 0.99
    assert not np.array_equal(e32, e16)  # really ran in bf16


def test_encode_texts_restores_order_and_pads_last_batch(tiny):
    params, spec, tok = tiny
    got = encode_texts(params, spec, tok, TEXTS, tower="passage", batch_size=2, progress=False)
    one_by_one = np.concatenate([_enc(params, spec, tok, [t], tower="passage", length=32) for t in TEXTS])
    np.testing.assert_allclose(got, one_by_one, atol=1e-6)
    assert encode_texts(params, spec, tok, [], progress=False).shape == (0, 32)


def test_encode_token_ids_equals_encode_texts_and_checks_its_input(tiny):
    params, spec, tok = tiny
    from jdr.models.tokenize import pad_id, ragged, token_ids

    tokens, offsets = ragged(token_ids(tok, TEXTS, 32))
    assert tokens.dtype == np.int32 and offsets.dtype == np.int64 and offsets[-1] == len(tokens)
    got = encode_token_ids(
        params, spec, tokens, offsets, tower="passage", pad_token_id=pad_id(tok), batch_size=2, progress=False
    )
    np.testing.assert_array_equal(got, encode_texts(params, spec, tok, TEXTS, batch_size=2, progress=False))
    with pytest.raises(ValueError, match="text 3 has 2[0-9] tokens, more than max_length 16"):
        encode_token_ids(params, spec, tokens, offsets, max_length=16, progress=False)
    with pytest.raises(ValueError, match="offsets"):
        encode_token_ids(params, spec, tokens, offsets[:-1], progress=False)


def test_max_length_beyond_position_table_is_one_clear_error(tiny):
    params, spec, tok = tiny  # the tiny model has 64 positions
    assert spec.bert.max_length == 64
    for call in (
        lambda: encode_texts(params, spec, tok, TEXTS, max_length=65, progress=False),
        lambda: encode_token_ids(params, spec, np.zeros(1, np.int32), np.array([0, 1]), max_length=65),
    ):
        with pytest.raises(ValueError, match="max_length 65 is outside \\[1, 64\\]") as e:
            call()
        assert "\n" not in str(e.value)
    # The whole table is usable.
    long_text = " ".join(["protein"] * 100)
    e = encode_texts(params, spec, tok, [long_text], max_length=64, progress=False)
    assert np.isfinite(e).all()


def test_encode_over_eight_devices_equals_one_device(tiny):
    params, spec, tok = tiny
    texts = TEXTS * 4  # 20 texts: batches of 8 rows split over 8 devices, the last one partly padding
    assert jax.local_device_count() == 8
    one = encode_texts(params, spec, tok, texts, batch_size=8, progress=False, devices=jax.local_devices()[:1])
    eight = encode_texts(params, spec, tok, texts, batch_size=8, progress=False)
    np.testing.assert_allclose(eight, one, atol=1e-6)
    # Rows that do not fill every device are padded up to a multiple of the device count.
    np.testing.assert_allclose(
        encode_texts(params, spec, tok, texts[:3], batch_size=2, progress=False), one[:3], atol=1e-6
    )


def test_encode_compiles_each_bucket_once_per_process(tiny):
    params, spec, tok = tiny
    from jdr.models import inference

    encode_texts(params, spec, tok, TEXTS, progress=False)
    fn, _, _ = inference._compiled(tuple(jax.local_devices()), spec, "query")
    before = fn._cache_size()
    encode_texts(jax.tree.map(np.asarray, params), spec, tok, TEXTS[::-1], progress=False)
    encode_texts(params, spec, tok, TEXTS, tower="query", progress=False)
    assert fn._cache_size() == before


def test_roberta_position_offset():
    cfg = BertConfig.from_hf_dict(
        {
            "model_type": "roberta",
            "vocab_size": 50,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 16,
            "max_position_embeddings": 34,
            "pad_token_id": 1,
        }
    )
    assert cfg.position_offset == 2 and cfg.max_length == 32
    assert BertConfig.from_hf_dict(cfg.to_hf_dict("roberta")) == cfg
    with pytest.raises(ValueError, match="hidden_act"):
        dataclasses.replace(cfg, hidden_act="swish")


def test_config_json_round_trip(tiny_dir):
    d = json.loads((tiny_dir / "config.json").read_text())
    cfg = BertConfig.from_hf_dict(d)
    assert BertConfig.from_hf_dict(cfg.to_hf_dict("bert")) == cfg


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_tiny_model_matches_sentence_transformers(tmp_path, pooling):
    st = pytest.importorskip("sentence_transformers")
    texts = TEXTS + [" ".join(["blood"] * 40)]  # the last one is truncated at max_seq_length (32)
    params, spec, tok = load(write_tiny_model(tmp_path / "m", pooling=pooling))
    ours = encode_texts(params, spec, tok, texts, progress=False)
    out = export(params, spec, tok, tmp_path / "exported")
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
