"""Pair generators over a raw corpus (jdr.data.selfsup): sentence splitting, tokens, cropping, ICT, augmentations,
dropout / title / BM25 pairs, and determinism per (seed, epoch, position)."""

import numpy as np
import pytest

from jdr.data.selfsup import (
    Augmentation,
    BM25Pairs,
    CorpusTokens,
    CropPairs,
    DropoutPairs,
    ICTPairs,
    TitlePairs,
    augment,
    chunk_documents,
    parse_augmentations,
    split_sentences,
)
from jdr.models.testing import DEFAULT_WORDS, build_wordpiece_tokenizer, tiny_vocab

WORDS = [w for w in DEFAULT_WORDS if len(w) > 3]


def _toy_texts(n_docs=40, seed=0):
    """Docs of 3-9 sentences of 6-14 vocabulary words; titles of 3-6 words (every 7th doc has none)."""
    r = np.random.default_rng(seed)
    titles, texts = [], []
    for d in range(n_docs):
        sentences = []
        for _ in range(r.integers(3, 10)):
            words = list(r.choice(WORDS, size=r.integers(6, 15)))
            sentences.append(" ".join([words[0].capitalize()] + words[1:]) + ".")
        texts.append(" ".join(sentences))
        titles.append("" if d % 7 == 0 else " ".join(r.choice(WORDS, size=r.integers(3, 7))))
    return [f"d{i}" for i in range(n_docs)], titles, texts


@pytest.fixture(scope="module")
def tokenizer():
    return build_wordpiece_tokenizer(tiny_vocab(), 512)


@pytest.fixture(scope="module")
def toy(tokenizer):
    ids, titles, texts = _toy_texts()
    return CorpusTokens.from_texts(tokenizer, ids, titles, texts), titles, texts


# -- sentences ------------------------------------------------------------------------------------------------


def test_split_sentences_handles_abbreviations_initials_headings_and_decimals():
    text = (
        "BACKGROUND Tumours grow (e.g. in mice) as shown by Smith et al. In Fig. 2 the rate rose. Cells vs. "
        "controls differed. Data from Lipman, D. J. and Pearson, W. R. were used. Seventy (10. 4%) died. "
        "METHODS AND RESULTS We treated 17 mice. 1. First item here. Was it real? Yes!"
    )
    got = [text[s:e] for s, e in split_sentences(text)]
    assert got == [
        "BACKGROUND",
        "Tumours grow (e.g. in mice) as shown by Smith et al. In Fig. 2 the rate rose.",
        "Cells vs. controls differed.",
        "Data from Lipman, D. J. and Pearson, W. R. were used.",
        "Seventy (10. 4%) died.",
        "METHODS AND RESULTS",
        "We treated 17 mice.",
        "1. First item here.",
        "Was it real?",
        "Yes!",
    ]
    # "et al. In": the abbreviation wins over a capital after it (the cost: one missed split in rare cases).
    assert split_sentences("") == [] and split_sentences("   ") == []


def test_split_sentences_covers_every_character():
    ids, titles, texts = _toy_texts(10)
    for text in texts + ["No stop at the end", "  Leading space. And trailing  "]:
        spans = split_sentences(text)
        assert "".join(text[s:e] for s, e in spans).replace(" ", "") == text.replace(" ", "")
        assert all(s < e for s, e in spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# -- tokens ---------------------------------------------------------------------------------------------------


def test_corpus_tokens_match_the_tokenizer(tokenizer, toy):
    corpus, titles, texts = toy
    sp = corpus.special
    assert sp.prefix == (tokenizer.token_to_id("[CLS]"),) and sp.suffix == (tokenizer.token_to_id("[SEP]"),)
    assert sp.mask_id == tokenizer.token_to_id("[MASK]")
    for i in (0, 5, 17):
        plain = tokenizer.encode(texts[i], add_special_tokens=False).ids
        assert corpus.text(i).tolist() == plain
        assert corpus.title(i).tolist() == tokenizer.encode(titles[i], add_special_tokens=False).ids
        sents = range(corpus.doc_sentences[i], corpus.doc_sentences[i + 1])
        assert len(sents) == len(split_sentences(texts[i]))
        for s in sents:
            a, b = corpus.sentence_chars[s]
            assert corpus.sentence(s).tolist() == tokenizer.encode(texts[i][a:b], add_special_tokens=False).ids
    # [CLS] ... [SEP] exactly as the tokenizer itself would wrap it, truncated to the budget.
    with_specials = tokenizer.encode(texts[3]).ids
    assert sp.wrap(corpus.text(3), 10_000).tolist() == with_specials
    assert sp.wrap(corpus.text(3), 8).tolist() == with_specials[:7] + with_specials[-1:]


# -- cropping -------------------------------------------------------------------------------------------------


def test_chunk_documents_tiles_each_document_on_a_moving_grid():
    lengths = np.array([5, 10, 11, 30, 64, 0])
    offsets = np.array([3, 0, 7, 4, 9, 2])
    rows = chunk_documents(lengths, 10, offsets, min_chunk_length=1)
    for d, n in enumerate(lengths):
        mine = rows[rows[:, 0] == d]
        covered = np.concatenate([np.arange(s, s + k) for _, s, k in mine]) if len(mine) else np.zeros(0)
        assert covered.tolist() == list(range(n)), d  # contiguous, in order, no overlap, nothing lost
        assert (mine[:, 2] <= 10).all()
        if n > 10:  # cuts at offset + j * 10
            cuts = mine[1:, 1]
            assert ((cuts - (offsets[d] or 10)) % 10 == 0).all()
    assert (chunk_documents(lengths, 10, offsets, min_chunk_length=4)[:, 2] >= 4).all()


def test_crop_spans_lie_inside_their_chunk_within_the_ratio_bounds(toy):
    corpus, _, _ = toy
    gen = CropPairs(
        corpus,
        chunk_length=32,
        ratio_min=0.1,
        ratio_max=0.5,
        min_chunk_length=8,
        query_max_length=64,
        passage_max_length=64,
    )
    rng = np.random.default_rng(0)
    for n in (8, 13, 32):
        spans = np.stack([gen.crop_spans(n, rng) for _ in range(2000)])  # [draws, view, (start, len)]
        starts, sizes = spans[..., 0], spans[..., 1]
        assert (starts >= 0).all() and (starts + sizes <= n).all()
        assert (sizes >= max(1, int(0.1 * n))).all() and (sizes <= int(0.5 * n)).all()
        assert len(np.unique(sizes)) > 1 and len(np.unique(starts)) > 1
    plan = gen.epoch_plan(3, 1)
    for p in range(50):
        doc, start, length = plan[p]
        chunk = corpus.passage(doc)[start : start + length].tolist()
        ex = gen.examples(3, 1, [p])[0]
        # The views are contiguous pieces of the chunk, at the spans the same rng draws.
        (qs, ql), (ks, kl) = gen.crop_spans(int(length), np.random.default_rng([3, 1, p]))
        assert ex.query[1:-1].tolist() == chunk[qs : qs + ql]
        assert ex.passages[0][1:-1].tolist() == chunk[ks : ks + kl]
        assert ex.passage_keys == (corpus.ids[doc],) and ex.relevant == {corpus.ids[doc]}


# -- ICT ------------------------------------------------------------------------------------------------------


def test_ict_removes_the_query_sentence_at_the_configured_rate(toy):
    corpus, _, _ = toy
    gen = ICTPairs(corpus, remove_prob=0.9, query_max_length=512, passage_max_length=512)
    plan = gen.epoch_plan(0, 0)
    removed = 0
    draws = 10_000
    for i in range(draws):
        doc = int(plan[i % len(plan)][0])
        ex = gen.example(plan[i % len(plan)], np.random.default_rng([7, i]))
        query, key = ex.query[1:-1].tolist(), ex.passages[0][1:-1].tolist()
        full = corpus.passage(doc).tolist()
        s = int(ex.query_key.rsplit("#s", 1)[1]) + corpus.doc_sentences[doc]
        assert query == corpus.sentence(s).tolist()
        lo = len(corpus.title(doc)) + corpus.sentence_offsets[s] - corpus.body_offsets[doc]
        if key == full[:lo] + full[lo + len(query) :]:
            removed += 1
        else:
            assert key == full
    assert abs(removed / draws - 0.9) < 0.03, removed / draws
    with pytest.raises(ValueError, match="remove_prob"):
        ICTPairs(corpus, remove_prob=1.5)


def test_ict_queries_are_real_sentences_within_the_key_budget(toy):
    corpus, _, _ = toy
    gen = ICTPairs(corpus, remove_prob=0.0, query_max_length=32, passage_max_length=40)
    for ex in gen.examples(0, 0, range(gen.epoch_size(0, 0))):
        assert len(ex.passages[0]) <= 40 and len(ex.query) <= 32
        q = ex.query[1:-1].tolist()
        key = ex.passages[0].tolist()
        # Not removed (p = 0): the sentence starts inside the truncated key.
        assert any(key[i : i + 1] == q[:1] for i in range(len(key)))


# -- augmentations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["delete", "replace", "mask", "shuffle", "repeat"])
def test_augmentations_change_exactly_the_expected_fraction(toy, kind):
    sp = toy[0].special
    p, n = 0.15, 40
    content = np.arange(200, 200 + n, dtype=np.int32)  # distinct ordinary ids, so every change is visible
    ids = sp.wrap(content, n + 2)
    ids[7] = 1  # an [UNK] inside the text: special, never touched
    counts = []
    for i in range(3000):
        out = augment(ids, Augmentation(kind, p), np.random.default_rng(i), sp)
        assert out[0] == ids[0] and out[-1] == ids[-1] and 1 in out.tolist()
        if kind == "delete":
            changed = len(ids) - len(out)
            assert [t for t in ids.tolist() if t in out.tolist()] == out.tolist()  # order kept
        elif kind == "repeat":
            changed = len(out) - len(ids)
            assert sorted(set(out.tolist())) == sorted(set(ids.tolist()))
        else:
            assert len(out) == len(ids)
            diff = out != ids
            changed = int(diff.sum())
            assert not np.isin(out[diff], sp.special_ids).any() or kind == "mask"
            if kind == "mask":
                assert (out[diff] == sp.mask_id).all()
        counts.append(changed)
    eligible = n - 1
    assert set(counts) <= {int(np.floor(p * eligible)), int(np.ceil(p * eligible))}
    assert abs(np.mean(counts) - p * eligible) < 0.05 * p * eligible


def test_span_mask_and_parse(toy):
    sp = toy[0].special
    ids = sp.wrap(np.arange(200, 212, dtype=np.int32), 20)
    for i in range(200):
        out = augment(ids, Augmentation("span", 5), np.random.default_rng(i), sp)
        masked = np.flatnonzero(out != ids)
        assert len(masked) == 5 and np.all(np.diff(masked) == 1) and (out[masked] == sp.mask_id).all()
        assert 0 not in masked and len(ids) - 1 not in masked
    short = sp.wrap(np.arange(200, 203, dtype=np.int32), 10)
    assert (augment(short, Augmentation("span", 5), np.random.default_rng(0), sp) == sp.mask_id).sum() == 2
    assert parse_augmentations("delete:0.1, span:5") == (Augmentation("delete", 0.1), Augmentation("span", 5))
    assert parse_augmentations("none") == ()
    for bad, msg in [
        ("drop:0.1", "not one of"),
        ("delete", "kind:value"),
        ("mask:1.5", r"\[0, 1\]"),
        ("span:2.5", "positive integer"),
        ("delete:x", "not a number"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_augmentations(bad)


# -- dropout, title, BM25 pairs -------------------------------------------------------------------------------


def test_dropout_title_and_bm25_pairs(toy):
    corpus, titles, texts = toy
    drop = DropoutPairs(corpus, query_max_length=16, passage_max_length=64)
    for ex in drop.examples(0, 0, range(10)):
        assert ex.query.tolist() == ex.passages[0].tolist() and len(ex.query) <= 16
    mirror = DropoutPairs(
        corpus, query_max_length=32, passage_max_length=32, query_augment=parse_augmentations("span:5")
    )
    ex = mirror.examples(0, 0, [0])[0]
    assert (ex.query != ex.passages[0]).sum() == 5

    title = TitlePairs(corpus)
    assert title.epoch_size(0, 0) == sum(1 for t in titles if t)
    for ex in title.examples(0, 0, range(5)):
        doc = corpus.ids.index(ex.passage_keys[0])
        assert ex.query[1:-1].tolist() == corpus.title(doc).tolist()
        assert ex.passages[0][1:-1].tolist() == corpus.text(doc).tolist()

    bm25 = BM25Pairs(corpus, titles, texts, query_unit="both", passage_max_length=512)
    for ex in bm25.examples(1, 0, range(bm25.epoch_size(1, 0))):
        source = ex.query_key.split("#")[0]
        assert ex.passage_keys[0] != source and ex.relevant == {ex.passage_keys[0], source}
        assert ex.passages[0][1:-1].tolist() == corpus.passage(corpus.ids.index(ex.passage_keys[0])).tolist()
    with pytest.raises(ValueError, match="query_unit"):
        BM25Pairs(corpus, titles, texts, query_unit="abstract")


# -- determinism ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda c, t, x: CropPairs(c, chunk_length=24, query_augment=parse_augmentations("delete:0.1")),
        lambda c, t, x: ICTPairs(c, passage_augment=parse_augmentations("mask:0.2")),
        lambda c, t, x: BM25Pairs(c, t, x),
    ],
)
def test_examples_are_a_function_of_seed_epoch_position(tokenizer, make):
    ids, titles, texts = _toy_texts()
    a = make(CorpusTokens.from_texts(tokenizer, ids, titles, texts), titles, texts)
    b = make(CorpusTokens.from_texts(tokenizer, ids, titles, texts), titles, texts)

    def flat(exs):
        return [(e.query.tolist(), [p.tolist() for p in e.passages], e.query_key, e.passage_keys) for e in exs]

    # Same (seed, epoch, position) -> same example, whatever else was drawn before and in which batch.
    assert flat(a.examples(5, 2, [3, 4, 5])) == flat(b.examples(5, 0, [0]) and b.examples(5, 2, [3, 4, 5]))
    assert flat(a.examples(5, 2, [4])) == flat(b.examples(5, 2, [3, 4]))[1:]
    assert flat(a.examples(5, 2, range(6))) != flat(a.examples(5, 3, range(6)))
    assert flat(a.examples(5, 2, range(6))) != flat(a.examples(6, 2, range(6)))
    # An epoch visits every item once.
    plan = a.epoch_plan(5, 2)
    assert len(np.unique(plan, axis=0)) == len(plan)
    with pytest.raises(IndexError, match="outside epoch"):
        a.examples(5, 2, [len(plan)])
