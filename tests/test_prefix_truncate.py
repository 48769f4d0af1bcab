"""Query / passage prefixes and Matryoshka truncation (`--dim`) on a tiny model: encode, export, load, CLI errors."""

import dataclasses
import json

import numpy as np
import pytest

from jdr.cli import main
from jdr.config import ConfigError, load_config
from jdr.data.batching import PretokenizedTexts
from jdr.models import encode_texts, export, load
from jdr.models.encoder import embedding_dim, with_truncation
from jdr.models.testing import write_tiny_model
from jdr.models.tokenize import token_ids

TEXTS = ["The protein expression in cells increased.", "mice", "gene dna rna", "blood brain barrier"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_truncated_encoder_returns_the_renormalised_prefix_of_the_full_embedding(tiny):
    params, spec, tok = tiny
    full = encode_texts(params, spec, tok, TEXTS, progress=False)
    short_spec = with_truncation(params, spec, 8)
    short = encode_texts(params, short_spec, tok, TEXTS, progress=False)
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert short.shape == (4, 8) and embedding_dim(params, short_spec) == 8
    np.testing.assert_allclose(short, want, atol=1e-6)


def test_dim_above_the_model_width_is_one_clear_line(tiny):
    params, spec, _ = tiny
    with pytest.raises(ValueError, match=r"^--dim 33: the model's embeddings have 32 dimensions \(give 1..32\)$"):
        with_truncation(params, spec, 33)


def test_cli_dim_above_width_exits_2_with_one_line(tiny, tmp_path, capsys):
    from test_data import write_beir

    model = write_tiny_model(tmp_path / "m")
    code = main(
        [
            "encode",
            "--model",
            str(model),
            "--input",
            str(write_beir(tmp_path / "ds") / "corpus.jsonl"),
            "--output",
            str(tmp_path / "emb"),
            "--dim",
            "64",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--dim 64" in err and "32 dimensions" in err
    assert not (tmp_path / "emb").exists()


def test_prefix_is_put_before_every_text_of_its_tower(tiny):
    params, spec, tok = tiny
    spec = dataclasses.replace(spec, query_prefix="query: ", passage_prefix="passage: ")
    plain = dataclasses.replace(spec, query_prefix="", passage_prefix="")
    for tower in ("query", "passage"):
        got = encode_texts(params, spec, tok, TEXTS, tower=tower, progress=False)
        want = encode_texts(params, plain, tok, [spec.prefix(tower) + t for t in TEXTS], tower=tower, progress=False)
        np.testing.assert_array_equal(got, want)
        assert not np.allclose(got, encode_texts(params, plain, tok, TEXTS, tower=tower, progress=False))


def test_training_tokens_carry_the_prefix(tiny):
    _, _, tok = tiny
    store = PretokenizedTexts.from_texts(tok, ["a", "b"], TEXTS[:2], 16, prefix="query: ")
    assert [list(store.tokens_of(i)) for i in range(2)] == token_ids(tok, ["query: " + t for t in TEXTS[:2]], 16)


def test_export_records_prompts_and_truncation_and_loads_back(tiny, tmp_path):
    params, spec, tok = tiny
    spec = with_truncation(params, dataclasses.replace(spec, query_prefix="query: ", passage_prefix="passage: "), 16)
    out = export(params, spec, tok, tmp_path / "exported")
    st_cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert json.loads((out / "jdr_encoder.json").read_text())["truncate_dim"] == 16
    params2, spec2, tok2 = load(out)
    assert (spec2.query_prefix, spec2.passage_prefix, spec2.truncate_dim) == ("query: ", "passage: ", 16)
    np.testing.assert_allclose(
        encode_texts(params2, spec2, tok2, TEXTS, tower="query", progress=False),
        encode_texts(params, spec, tok, TEXTS, tower="query", progress=False),
        atol=1e-6,
    )
    params3, spec3, _ = load(out, query_prefix="", passage_prefix="")  # the config's prefixes win
    assert (spec3.query_prefix, spec3.passage_prefix) == ("", "")


def test_sentence_transformers_with_truncate_dim_and_prompts_matches_jdr(tiny, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    params, spec, tok = tiny
    spec = with_truncation(params, dataclasses.replace(spec, query_prefix="query: ", passage_prefix="passage: "), 16)
    out = export(params, spec, tok, tmp_path / "exported")
    given = st.SentenceTransformer(str(out), device="cpu", truncate_dim=16)
    recorded = st.SentenceTransformer(str(out), device="cpu")  # ST >= 5 reads truncate_dim from the export
    assert json.loads((out / "config_sentence_transformers.json").read_text())["truncate_dim"] == 16
    for tower in ("query", "passage"):
        ours = encode_texts(params, spec, tok, TEXTS, tower=tower, progress=False)
        for model in (given, recorded):
            theirs = model.encode(TEXTS, prompt_name=tower, convert_to_numpy=True, normalize_embeddings=True)
            assert theirs.shape == ours.shape == (4, 16)
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_prefix_key_typo_and_wrong_type_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model.query_prefx") as e:
        load_config(None, ["model.query_prefx=query: "])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="^query_prefix: must be a string"):
        dataclasses.replace(load(write_tiny_model(tmp_path / "m"))[1], query_prefix=3)
