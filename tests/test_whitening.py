"""Whitening (jdr.models.whitening): identity covariance on the fit set, the exported ST Dense + Normalize dir
read back by jdr (and by sentence-transformers when installed), and `jdr whiten`."""

import dataclasses
import json

import numpy as np
import pytest

from jdr.cli import main
from jdr.data.beir import load_corpus
from jdr.models.encoder import embedding_dim
from jdr.models.hf import export, load
from jdr.models.inference import encode_texts
from jdr.models.testing import write_tiny_model
from jdr.models.whitening import add_whitening, fit_whitening

TEXTS = [
    "the cell growth factor",
    "virus infection of blood",
    "immune response to the drug",
    "gene expression",
    "tumor cells in mice",
    "brain activity levels were increased",
    "risk of disease in patients",
    "dna and rna",
]


def _correlated(n=500, h=12, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, h)) @ r.standard_normal((h, h)) + r.standard_normal(h) * 3


@pytest.mark.parametrize("dim", [None, 5])
def test_whitening_gives_identity_covariance_on_its_fit_set(dim):
    x = _correlated()
    w = fit_whitening(x, dim=dim, eps=0.0)
    y = w(x, normalize=False).astype(np.float64)
    k = x.shape[1] if dim is None else dim
    assert y.shape == (len(x), k)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(k), atol=1e-5)
    # The kept directions are those of largest variance: the spectrum is descending.
    assert np.all(np.diff(w.singular_values) <= 0)
    np.testing.assert_allclose(w.bias, -w.mean @ w.kernel)
    assert np.allclose(np.linalg.norm(w(x), axis=1), 1.0)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="dim must be"):
        fit_whitening(_correlated(), dim=13)
    with pytest.raises(ValueError, match=r"\[N >= 2, H\]"):
        fit_whitening(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="zero variance"):
        fit_whitening(np.c_[_correlated(), np.zeros(500)], eps=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(write_tiny_model(tmp_path_factory.mktemp("w") / "m", normalize=True))


def _enc(params, spec, tok, texts=TEXTS):
    return encode_texts(params, spec, tok, texts, tower="passage", progress=False)


@pytest.mark.parametrize("normalized_model", [True, False])
def test_exported_whitened_model_encodes_as_the_whitened_embeddings(tiny, tmp_path, normalized_model):
    params, spec, tok = tiny
    spec = dataclasses.replace(spec, normalize=normalized_model)
    emb = _enc(params, spec, tok)
    w = fit_whitening(emb, dim=6)
    wparams, wspec = add_whitening(params, spec, w)
    assert (wspec.dense, wspec.normalize_before_dense, wspec.normalize) == ("identity", normalized_model, True)
    assert embedding_dim(wparams, wspec) == 6
    out = export(wparams, wspec, tok, tmp_path / "whitened")
    kinds = [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling"] + ["Normalize"] * normalized_model + ["Dense", "Normalize"]
    dense_cfg = json.loads((out / f"{len(kinds) - 2}_Dense" / "config.json").read_text())
    assert dense_cfg == {
        "in_features": 32,
        "out_features": 6,
        "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    p2, s2, t2 = load(out)
    assert s2 == wspec
    np.testing.assert_allclose(_enc(p2, s2, t2), w(emb), atol=1e-5)
    np.testing.assert_allclose(_enc(wparams, wspec, tok), w(emb), atol=1e-5)


def test_whitening_composes_with_an_identity_dense_and_refuses_what_it_cannot_fold(tiny):
    params, spec, tok = tiny
    raw = dataclasses.replace(spec, normalize=False)
    first, first_spec = add_whitening(params, raw, fit_whitening(_enc(params, raw, tok), dim=10))
    affine_spec = dataclasses.replace(first_spec, normalize=False)  # an identity Dense as the last step
    emb = _enc(first, affine_spec, tok)
    w = fit_whitening(emb, dim=4)
    composed, composed_spec = add_whitening(first, affine_spec, w)
    assert embedding_dim(composed, composed_spec) == 4
    np.testing.assert_allclose(_enc(composed, composed_spec, tok), w(emb), atol=1e-5)
    with pytest.raises(ValueError, match="followed by Normalize"):
        add_whitening(first, first_spec, fit_whitening(_enc(first, first_spec, tok)))
    with pytest.raises(ValueError, match="width"):
        add_whitening(params, spec, fit_whitening(_correlated(h=7)))


def test_jdr_whiten_cli(tiny_model, toy_beir, tmp_path, capsys):
    out = tmp_path / "whitened"
    assert (
        main(["whiten", "--model", str(tiny_model), "--data", str(toy_beir), "--dim", "8", "--output", str(out)]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["fit_docs"] == 48 and (summary["dim_in"], summary["dim_out"]) == (32, 8)
    assert json.loads((out / "whitening.json").read_text())["config"]["dim"] == 8
    params, spec, tok = load(tiny_model)
    passages = load_corpus(toy_beir / "corpus.jsonl").passages()
    emb = _enc(params, spec, tok, passages)
    np.testing.assert_allclose(_enc(*load(out), passages), fit_whitening(emb, dim=8)(emb), atol=1e-5)
    assert (
        main(
            [
                "whiten",
                "--model",
                str(tiny_model),
                "--data",
                str(toy_beir),
                "--dim",
                "99",
                "--output",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "dim must be in [1, 32]" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_whitened_export_loads_in_sentence_transformers(tiny, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    params, spec, tok = tiny
    emb = _enc(params, spec, tok)
    w = fit_whitening(emb, dim=6)
    out = export(*add_whitening(params, spec, w), tok, tmp_path / "whitened")
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, w(emb), atol=1e-5)
    np.testing.assert_allclose(theirs, _enc(*load(out)), atol=1e-5)
