"""RocketQA denoising with a cross-encoder: which candidates each rule drops, judged only to `depth`, and `jdr mine
--ce-model` dropping what the filter says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jdr.cli import main
from jdr.data.beir import load_beir
from jdr.models.cross_encoder import score_texts
from jdr.models.cross_encoder_hf import export_cross_encoder, load_cross_encoder
from jdr.models.testing import write_tiny_model
from jdr.negatives.ce_denoise import CrossEncoderFilter
from jdr.negatives.table import positives_csr


@pytest.fixture(scope="module")
def ce(tmp_path_factory):
    root = tmp_path_factory.mktemp("ce")
    enc = write_tiny_model(root / "enc", max_position_embeddings=64)
    params, spec, tok = load_cross_encoder(enc, seed=2)
    return export_cross_encoder(params, spec, enc, root / "ce"), params, spec, tok


@pytest.fixture(scope="module")
def toy(toy_beir):
    data = load_beir(toy_beir, "train")
    qids = sorted(data.qrels)[:4]
    offsets, pos = positives_csr(qids, data.qrels, data.corpus.index)
    rows = np.array([[r for r in range(12) if r not in pos[offsets[i] : offsets[i + 1]]][:8] for i in range(4)])
    rows[0, 6:] = -1
    return data, qids, rows, offsets, pos


def _logits(ce, data, qids, rows):
    _, params, spec, tok = ce
    out = np.full(rows.shape, np.nan, np.float32)
    for i, q in enumerate(qids):
        valid = rows[i] >= 0
        out[i, valid] = score_texts(
            params,
            spec,
            tok,
            [data.queries[q]] * int(valid.sum()),
            [data.corpus.passage(int(r)) for r in rows[i, valid]],
            progress=False,
        )
    return out


def test_threshold_drops_what_scores_at_or_above_it_within_depth(ce, toy):
    data, qids, rows, offsets, pos = toy
    logits = _logits(ce, data, qids, rows)
    t = float(np.nanmedian(logits[:, :5]))
    f = CrossEncoderFilter(*ce[1:], data.corpus, data.queries, threshold=t, depth=5)
    drop = f.drop_mask(qids, rows, offsets, pos)
    want = (logits >= t) & (np.arange(8) < 5)[None, :]
    np.testing.assert_array_equal(drop, np.nan_to_num(want, nan=False).astype(bool))
    kept, n = f.filter(qids, rows, offsets, pos)
    assert n == int(want.sum()) and 0 < n < (rows[:, :5] >= 0).sum()
    for i in range(4):  # order kept, dropped ones gone, padding at the end
        assert kept[i][kept[i] >= 0].tolist() == [r for r, d in zip(rows[i], drop[i]) if r >= 0 and not d]


def test_margin_is_measured_from_the_weakest_positive(ce, toy):
    data, qids, rows, offsets, pos = toy
    logits = _logits(ce, data, qids, rows)
    _, params, spec, tok = ce
    weakest = np.array(
        [
            min(
                score_texts(
                    params,
                    spec,
                    tok,
                    [data.queries[q]] * int(offsets[i + 1] - offsets[i]),
                    [data.corpus.passage(int(r)) for r in pos[offsets[i] : offsets[i + 1]]],
                    progress=False,
                )
            )
            for i, q in enumerate(qids)
        ]
    )
    f = CrossEncoderFilter(*ce[1:], data.corpus, data.queries, margin=0.01, depth=8)
    want = np.nan_to_num(logits >= (weakest - 0.01)[:, None], nan=False).astype(bool) & (rows >= 0)
    np.testing.assert_array_equal(f.drop_mask(qids, rows, offsets, pos) & (rows >= 0), want)


def test_one_rule_exactly():
    with pytest.raises(ValueError, match="exactly one"):
        CrossEncoderFilter(None, None, None, None, {}, threshold=1.0, margin=1.0)


def test_mine_with_a_cross_encoder_drops_the_judged_candidates(ce, toy_beir, tmp_path):
    plain, denoised = tmp_path / "plain.jsonl", tmp_path / "ce.jsonl"
    common = ["mine", "--data", str(toy_beir), "--source", "bm25", "--num", "0", "--depth", "6", "--json"]
    assert main(common + ["--output", str(plain)]) == 0
    assert (
        main(common + ["--output", str(denoised), "--ce-model", str(ce[0]), "--ce-threshold=-1e9", "--ce-depth", "2"])
        == 0
    )
    a = [json.loads(x) for x in plain.read_text().splitlines()]
    b = [json.loads(x) for x in denoised.read_text().splitlines()]
    for x, y in zip(a, b):  # everything judged is dropped at threshold -inf: the first 2 of each window go
        assert [p["docid"] for p in y["negative_passages"]] == [p["docid"] for p in x["negative_passages"]][2:]


class _DropFirst:
    """A stand-in cross-encoder filter that drops each query's first candidate: tests the refresh's wiring."""

    def __init__(self):
        self.calls = []

    def filter(self, qids, rows, pos_offsets, pos_rows):
        self.calls.append((list(qids), rows.copy(), pos_offsets.copy(), pos_rows.copy()))
        out = np.full_like(rows, -1)
        out[:, :-1] = rows[:, 1:]
        return out, int((rows[:, 0] >= 0).sum())


def test_ance_refresh_applies_the_cross_encoder_filter_to_its_candidates():
    from jdr.data.beir import Corpus
    from jdr.negatives import AnnRefreshConfig, ann_build_fn, build_table

    n, dim = 20, 4
    ids = [f"d{i}" for i in range(n)]
    corpus = Corpus(ids, [""] * n, [f"text {i}" for i in range(n)], {d: i for i, d in enumerate(ids)})
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(5)}
    base = build_table({"random": 2}, corpus, {}, qrels, depth=5)
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(5, dim)).astype(np.float32)
    qids = list(base.qids)

    def build(candidate_filter):
        cfg = AnnRefreshConfig(depth=5, candidate_filter=candidate_filter)
        fn = ann_build_fn(
            lambda _: p, lambda _, qs: q[[qids.index(x) for x in qs]], corpus, qids, qrels, cfg, initial=base
        )
        return fn({}, 10)

    plain, fake = build(None), _DropFirst()
    filtered = build(fake)
    ((called_qids, rows, offsets, pos),) = fake.calls
    assert called_qids == qids and np.diff(offsets).tolist() == [1] * 5  # each query's positive passed along
    np.testing.assert_array_equal(filtered.candidates["ann"][:, :4], plain.candidates["ann"][:, 1:5])
    assert filtered.timings["ce_dropped"] == 5
