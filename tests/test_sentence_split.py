"""Sentence splitting for lower-cased and caseless text (`data.selfsup.sentence_split`): the "lowercase" rules and
"window:N" find the units ICT and the BM25 pseudo-queries need where the default (a capital after the stop) finds
none."""

import json

import pytest

from jdr.data.selfsup.sentences import make_splitter, split_sentences, split_windows

LOWER = "tumours grow (e.g. in mice) fast. cells vs. controls differed. was it real? yes! 結果は良い。次の文です。"


def _spans(splitter, text):
    return [text[s:e] for s, e in splitter(text)]


def test_lowercase_rules_split_lower_cased_and_caseless_text():
    assert _spans(make_splitter("regex"), LOWER) == [LOWER]  # no capital after any stop: one "sentence"
    assert _spans(make_splitter("lowercase"), LOWER) == [
        "tumours grow (e.g. in mice) fast.",
        "cells vs. controls differed.",
        "was it real?",
        "yes!",
        "結果は良い。",
        "次の文です。",
    ]
    cased = "Cells grew. In Fig. 2 the rate rose. Was it real? Yes!"
    assert _spans(make_splitter("lowercase"), cased) == _spans(split_sentences, cased)


def test_window_split_covers_every_word_in_n_word_windows():
    text = "  one two three four  five six seven "
    assert _spans(make_splitter("window:3"), text) == ["one two three", "four  five six", "seven"]
    assert split_windows("", 3) == [] and _spans(make_splitter("window:1"), "a b") == ["a", "b"]


@pytest.mark.parametrize("spec", ["window:0", "window:x", "window", "nltk"])
def test_bad_split_spec_is_one_line_naming_the_key(spec):
    with pytest.raises(ValueError, match=r"data.selfsup.sentence_split must be one of regex, lowercase, window:N"):
        make_splitter(spec)


@pytest.fixture(scope="module")
def lower_beir(tmp_path_factory):
    from test_selfsup_data import _toy_texts

    ids, titles, texts = _toy_texts(12)
    d = tmp_path_factory.mktemp("lower") / "beir"
    d.mkdir()
    (d / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": i, "title": t.lower(), "text": x.lower()}) + "\n" for i, t, x in zip(ids, titles, texts)
        )
    )
    return d


def test_ict_on_a_lower_cased_corpus_needs_the_lowercase_split(tiny_model, lower_beir, tmp_path):
    from jdr.config import ConfigError, load_config
    from jdr.train.trainer import prepare

    def cfg(*over):
        return load_config(
            "configs/tiny.py",
            [
                f"model.path={tiny_model}",
                f"data.dataset={lower_beir}",
                "data.source=selfsup",
                "data.selfsup.pairs=ict",
                "negatives.source=none",
                "negatives.num=0",
                "data.dev_queries=0",
                "train.global_batch_size=8",
                *over,
            ],
        )

    with pytest.raises(ConfigError, match="yields no training pairs"):
        prepare(cfg(), tmp_path / "a")
    for split in ("lowercase", "window:8"):
        source = prepare(cfg(f"data.selfsup.sentence_split={split}"), tmp_path / split.replace(":", "")).source
        assert source.generator.epoch_size(0, 0) == 12  # a query sentence from every document
    with pytest.raises(ConfigError, match="sentence_split must be one of"):
        prepare(cfg("data.selfsup.sentence_split=words"), tmp_path / "c")
