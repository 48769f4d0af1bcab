"""Quantized indexes (jdr.index.quantized): int8 calibration, binary Hamming search, rescoring; the CLI path."""

import json

import faiss
import numpy as np
import pytest

from jdr.cli import main
from jdr.evaluate import read_trec_run
from jdr.index.memories import Memory
from jdr.index.quantized import Int8Calibration, QuantizedIndex, binarize, unpack_signs


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_round_trip_within_one_quantization_step():
    x = unit_rows(500, 24)
    cal = Int8Calibration.fit(x, sample=200, seed=1)
    inside = np.clip(x, cal.start, cal.start + 255 * cal.step)  # values the sample's ranges cover
    codes = cal.encode(inside)
    assert codes.dtype == np.int8 and codes.min() >= -128 and codes.max() <= 127
    err = np.abs(cal.decode(codes) - inside)
    assert (err <= cal.step / 2 + 1e-6).all()  # nearest level: half a step (ST's truncation: under one step)
    assert err.max() > cal.step.min() / 10  # not trivially exact


def test_int8_faiss_index_encodes_and_decodes_as_the_calibration():
    x = unit_rows(300, 16)
    cal = Int8Calibration.fit(x)
    index = cal.faiss_index()
    index.add(x)
    np.testing.assert_allclose(index.reconstruct_n(0, len(x)), cal.decode(cal.encode(x)), atol=1e-6)
    back = Int8Calibration.from_faiss(index)
    np.testing.assert_allclose(back.start, cal.start, atol=1e-7)
    np.testing.assert_allclose(back.step, cal.step, rtol=1e-6)


def test_binary_hamming_ranking_equals_numpy_reference():
    docs, queries = unit_rows(200, 64, seed=2), unit_rows(7, 64, seed=3)
    index = QuantizedIndex.build(docs, "binary", keep="none")
    scores, rows = index.search(queries, 20)
    signs_d, signs_q = docs > 0, queries > 0
    hamming = (signs_q[:, None, :] != signs_d[None, :, :]).sum(-1)  # [7, 200]
    want = np.sort(hamming, axis=1)[:, :20]
    np.testing.assert_array_equal(64 - 2 * want, scores)  # the k best distances, in order
    got = np.take_along_axis(hamming, rows, 1)
    np.testing.assert_array_equal(64 - 2 * got, scores)  # and each row returned has the distance it claims
    assert len({tuple(r) for r in rows}) == len(rows)


def test_codes_agree_with_sentence_transformers_quantize_embeddings():
    st_quant = pytest.importorskip("sentence_transformers.util.quantization")
    x = unit_rows(300, 32, seed=10)
    np.testing.assert_array_equal(binarize(x), st_quant.quantize_embeddings(x, precision="ubinary"))
    ours = Int8Calibration.fit(x).encode(x).astype(int)
    theirs = st_quant.quantize_embeddings(x, precision="int8").astype(int)  # same ranges; ST floors, we round
    assert ((ours - theirs) >= 0).all() and ((ours - theirs) <= 1).all()


def test_binary_codes_are_st_ubinary_sign_bits():
    x = np.array([[0.5, -1, 0, 2, -0.1, 3, 1, -2, 1, 1, 1, 1, 1, 1, 1, -1]], np.float32)
    assert binarize(x).tolist() == [[0b10010110, 0b11111110]]
    np.testing.assert_array_equal(unpack_signs(binarize(x), 16), np.where(x > 0, 1.0, -1.0))


@pytest.mark.parametrize("kind,keep", [("binary", "float"), ("int8", "float")])
def test_rescoring_the_whole_corpus_equals_exact_search(kind, keep):
    docs, queries = unit_rows(120, 32, seed=4), unit_rows(9, 32, seed=5)
    exact = faiss.IndexFlatIP(32)
    exact.add(docs)
    want_scores, want_rows = exact.search(queries, 10)
    index = QuantizedIndex.build(docs, kind, keep=keep)
    scores, rows = index.search(queries, 10, rescore=12)  # 10 * 12 >= 120 documents
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    _, coarse = index.search(queries, 10)  # the quantized ranking alone differs
    assert (coarse != want_rows).any()


def test_binary_rescoring_with_int8_vectors_scores_the_decoded_vectors():
    docs, queries = unit_rows(80, 16, seed=6), unit_rows(3, 16, seed=7)
    index = QuantizedIndex.build(docs, "binary")  # keeps int8 by default
    assert index.keep == "int8" and index.bytes_per_doc() == {"search": 2, "rescore": 16}
    scores, rows = index.search(queries, 5, rescore=16)  # whole corpus
    decoded = Int8Calibration.fit(docs).decode(Int8Calibration.fit(docs).encode(docs))
    want = queries @ decoded.T
    np.testing.assert_array_equal(rows, np.argsort(-want, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(want, rows, 1), rtol=1e-5)


def test_int8_rescore_without_float_vectors_is_one_line():
    index = QuantizedIndex.build(unit_rows(20, 8), "int8")
    with pytest.raises(ValueError, match="--rescore-vectors float"):
        index.search(unit_rows(1, 8), 3, rescore=2)


def test_save_load_round_trip_and_memory(tmp_path):
    docs = unit_rows(50, 16, seed=8)
    index = QuantizedIndex.build(docs, "binary", keep="int8")
    index.save(tmp_path / "b")
    (tmp_path / "b.ids.txt").write_text("".join(f"d{i}\n" for i in range(50)))
    memory = Memory.load(tmp_path / "b")
    q = unit_rows(4, 16, seed=9)
    for m in (0, 3):
        np.testing.assert_array_equal(memory.search(q, 5, rescore=m)[1], index.search(q, 5, rescore=m)[1])
    flat = Memory.from_arrays("f", docs, [f"d{i}" for i in range(50)])
    with pytest.raises(ValueError, match="--quantize"):
        flat.search(q, 5, rescore=2)


def test_cli_index_quantize_and_search_rescore(tmp_path, capsys):
    from test_data import write_beir

    from jdr.models.testing import write_tiny_model

    model, ds = write_tiny_model(tmp_path / "model"), write_beir(tmp_path / "ds")
    emb, index, run = tmp_path / "emb", tmp_path / "bin", tmp_path / "run.trec"
    assert (
        main(
            [
                "encode",
                "--model",
                str(model),
                "--input",
                str(ds / "corpus.jsonl"),
                "--output",
                str(emb),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    assert main(["index", "--embeddings", str(emb), "--quantize", "binary", "--output", str(index)]) == 0
    out = capsys.readouterr().out
    assert "4 B/doc searched" in out and "32 B/doc kept for rescoring" in out  # 32 dims: 4 sign bytes, int8
    assert json.loads((index / "quantized.json").read_text())["keep"] == "int8"
    assert (
        main(
            [
                "search",
                "--model",
                str(model),
                "--index",
                str(index),
                "--queries",
                str(ds / "queries.jsonl"),
                "--top-k",
                "2",
                "--rescore",
                "2",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    got = read_trec_run(run)
    assert set(got) == {"q1", "q2", "q3"} and all(len(d) == 2 for d in got.values())
