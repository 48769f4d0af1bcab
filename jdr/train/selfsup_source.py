"""`data.source=selfsup`: the config's `data.selfsup` section to a self-supervised pair source."""

from __future__ import annotations

from jdr.config import ConfigError
from jdr.data.source import TrainingSource

SELFSUP_PAIRS = ("crop", "ict", "dropout", "title", "bm25")


def selfsup_source(cfg, tokenizer, spec, counts: dict[str, int]) -> TrainingSource:
    """`data.source=selfsup`: a pair generator over `data.dataset`'s corpus (no queries, no qrels, no dev split)
    as a `jdr.data.selfsup.PairSource`, with random / BM25 negatives keyed by the positive's document (`counts`:
    `jdr.train.sources.negative_counts`)."""
    from jdr.data.beir import load_corpus, resolve_dataset
    from jdr.data.selfsup import (
        BM25Pairs,
        CorpusTokens,
        CropPairs,
        DropoutPairs,
        ICTPairs,
        TitlePairs,
        parse_augmentations,
    )
    from jdr.data.selfsup.source import PairSource
    from jdr.negatives.documents import document_negatives

    s = cfg.data.selfsup
    if s.pairs not in SELFSUP_PAIRS:
        raise ConfigError(f"data.selfsup.pairs must be one of {', '.join(SELFSUP_PAIRS)}, got {s.pairs!r}")
    if cfg.negatives.refresh_every:
        raise ConfigError(
            "negatives.refresh_every: the ANCE refresh re-mines labelled queries; data.source=selfsup has none"
        )
    try:
        augments = {
            "query_augment": parse_augmentations(s.query_augment),
            "passage_augment": parse_augmentations(s.passage_augment),
        }
    except ValueError as e:
        raise ConfigError(f"data.selfsup: {e}") from None
    if spec.query_prefix or spec.passage_prefix:
        raise ConfigError(
            "model.query_prefix / model.passage_prefix: data.source=selfsup builds pairs from corpus "
            'tokens and applies no prefix; set both to ""'
        )
    corpus = load_corpus(resolve_dataset(cfg.data.dataset) / "corpus.jsonl")
    from jdr.data.selfsup.sentences import make_splitter

    try:
        splitter = make_splitter(s.sentence_split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tokens = CorpusTokens.from_corpus(tokenizer, corpus, splitter=splitter)
    common = dict(query_max_length=spec.query_max_length, passage_max_length=spec.passage_max_length, **augments)
    try:
        generator = {
            "crop": lambda: CropPairs(
                tokens, chunk_length=s.chunk_length, ratio_min=s.ratio_min, ratio_max=s.ratio_max, **common
            ),
            "ict": lambda: ICTPairs(tokens, remove_prob=s.remove_prob, min_query_tokens=s.min_query_tokens, **common),
            "dropout": lambda: DropoutPairs(tokens, **common),
            "title": lambda: TitlePairs(tokens, **common),
            "bm25": lambda: BM25Pairs(
                tokens,
                corpus.titles,
                corpus.texts,
                query_unit=s.query_unit,
                min_query_tokens=s.min_query_tokens,
                **common,
            ),
        }[s.pairs]()
        table = (
            document_negatives(
                corpus, counts, depth=cfg.negatives.depth, seed=cfg.seed, skip_top=cfg.negatives.skip_top
            )
            if counts
            else None
        )
        return PairSource(
            generator,
            global_batch_size=cfg.train.global_batch_size,
            seed=cfg.seed,
            negatives=table,
            num_negatives=cfg.negatives.num if counts else 0,
            name=s.pairs,
        )
    except ValueError as e:
        raise ConfigError(f"data.selfsup ({s.pairs}): {e}") from None
