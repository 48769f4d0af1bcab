"""From the config's `data` and `negatives` sections to the training source the trainer consumes.

Everything that can be wrong with the data files or these config sections fails here, in one line, before any
compile: a missing file, a bad row, an unknown source kind, a `file` negatives source on data without negatives,
an augmentation memory the model cannot search (`jdr.train.memories`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jdr.config import ConfigError
from jdr.data.labeled import LabeledData, LabeledSource
from jdr.data.mixture import MixtureSource, split_rows
from jdr.data.source import TrainingSource

SOURCE_KINDS = ("beir", "jsonl", "triplets", "msmarco", "mixture", "selfsup")
MEMBER_KINDS = ("beir", "jsonl", "triplets")
WARM_STARTS = ("bm25", "file", "random")


@dataclasses.dataclass
class TrainingData:
    """What a run trains on. `source`: the stream of global batches. `labeled`: the single labelled source the
    ANCE refresh re-mines and the dev split comes from (for a mixture, its first member); `dev`: the held-out
    dev queries with their qrels over that source's corpus (None when `data.dev_queries` is 0); `memory`: the
    `memory` negatives source's miner (`jdr.negatives.memory.MemoryNegatives`) the refresh re-mines with, or None."""

    source: TrainingSource
    labeled: LabeledSource | None
    dev: LabeledData | None
    memory: Any = None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source.describe(), "dev_queries": 0 if self.dev is None else len(self.dev.qrels)}


def split_dev(qids, n_dev: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of the training queries into (train, dev); dev is used for periodic evaluation only.

    A function of the sorted query ids and the seed alone, so two readers of the same queries (a BEIR dir and the
    `jdr mine` JSONL written from it) hold out the same dev queries."""
    qids = sorted(qids)
    if n_dev <= 0:
        return qids, []
    if n_dev >= len(qids):
        raise ConfigError(f"data.dev_queries={n_dev} leaves no training queries out of {len(qids)}")
    perm = np.random.default_rng([seed, 0xDE5]).permutation(len(qids))
    dev = set(qids[i] for i in perm[:n_dev])
    return [q for q in qids if q not in dev], sorted(dev)


def negative_counts(cfg) -> dict[str, int]:
    """The target per-source negatives counts of the config (`{}`: in-batch negatives only)."""
    from jdr.negatives.sources import source_counts

    if cfg.negatives.source == "none" or cfg.negatives.num == 0:
        return {}
    try:
        return source_counts(cfg.negatives.source, cfg.negatives.num, cfg.negatives.hybrid)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def warm_start_counts(counts: dict[str, int], warm_start: str = "bm25") -> dict[str, int]:
    """ANCE warm start: until the first refresh, ANN's share of the negatives comes from `warm_start`."""
    if warm_start not in WARM_STARTS:
        raise ConfigError(f"negatives.warm_start must be one of {', '.join(WARM_STARTS)}, got {warm_start!r}")
    if "ann" not in counts:
        return counts
    out = {k: v for k, v in counts.items() if k != "ann"}
    out[warm_start] = out.get(warm_start, 0) + counts["ann"]
    return out


def load_labeled(kind: str, cfg, where: str = "") -> LabeledData:
    """Read the labelled data of source `kind` (`where`: the path or dataset name; default from the config)."""
    if kind == "beir":
        from jdr.data.beir import load_beir, resolve_dataset

        name = where or cfg.data.dataset
        beir = load_beir(resolve_dataset(name), split=cfg.data.train_split)
        return LabeledData(beir.corpus, beir.queries, beir.qrels, None, name=str(name))
    if kind == "jsonl":
        from jdr.data.tevatron import load_tevatron

        return load_tevatron(_path(where or cfg.data.jsonl.path, "data.jsonl.path"))
    if kind == "triplets":
        from jdr.data.triplets import load_triplets

        return load_triplets(_path(where or cfg.data.triplets.path, "data.triplets.path"))
    if kind == "msmarco":
        from jdr.data.msmarco import load_msmarco_training

        m = cfg.data.msmarco
        return load_msmarco_training(_path(m.collection, "data.msmarco.collection"),
                                     _path(m.queries, "data.msmarco.queries"), _path(m.qrels, "data.msmarco.qrels"),
                                     m.triples or None)
    raise ConfigError(f"data.source must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")


def _path(value: str, key: str) -> str:
    if not value:
        raise ConfigError(f"{key} is empty: set it to the training file")
    return value


def dense_encoders(data: LabeledData, spec, tokenizer, *, batch_size: int, sharded: bool):
    """`(encode_corpus(params) -> [N, d], encode_queries(params, qids) -> [len(qids), d])` over `data`'s corpus
    (row order) and queries with the passage / query tower: what mining with the model being trained embeds.
    `sharded`: hosts split the corpus and all-gather (`encode_sharded`); never from a background thread, where the
    collective could interleave with the train step's."""
    from jdr.distributed import encode_sharded
    from jdr.models.inference import encode_texts

    kw = dict(batch_size=batch_size, progress=False)

    def encode_corpus(params):
        def local(texts):
            return encode_texts(params, spec, tokenizer, texts, tower="passage", **kw)

        passages = data.corpus.passages()
        return encode_sharded(local, passages) if sharded else local(passages)

    def encode_queries(params, qids):
        return encode_texts(params, spec, tokenizer, [data.queries[q] for q in qids], tower="query", **kw)

    return encode_corpus, encode_queries


def token_encoders(source: LabeledSource, spec, *, batch_size: int, sharded: bool, progress: bool = False):
    """`dense_encoders` over a built source's token stores: the corpus rows and training queries it tokenised once
    (`PretokenizedTexts.ragged` -> `encode_token_ids`), so an ANCE refresh never re-tokenises. Augmentation
    passages the store holds after the corpus (memory negatives) are not encoded: their memories are fixed.
    `progress`: a tqdm bar per encode ("refresh: passage", "refresh: query")."""
    from jdr.distributed import encode_sharded
    from jdr.models.inference import encode_token_ids

    passages, queries = source.passage_tokens, source.query_tokens

    def encode_rows(params, store, rows, tower):
        tokens, offsets = store.ragged(rows)
        return encode_token_ids(params, spec, tokens, offsets, tower=tower, pad_token_id=store.pad_id,
                                max_length=store.max_length, batch_size=batch_size, progress=progress,
                                desc=f"refresh: {tower}")

    def encode_corpus(params):
        def local(rows):
            return encode_rows(params, passages, rows, "passage")

        rows = np.arange(len(source.data.corpus))
        return encode_sharded(local, rows) if sharded else local(rows)

    def encode_queries(params, qids):
        return encode_rows(params, queries, queries.rows(qids, "query"), "query")

    return encode_corpus, encode_queries


def labeled_source(data: LabeledData, cfg, tokenizer, spec, *, global_batch_size: int, n_dev: int,
                   key_prefix: str = "", memory=None, params=None) -> tuple[LabeledSource, LabeledData | None]:
    """The source over `data` (dev queries held out) with its initial negatives table, and the dev split.
    `memory`: `(MemoryNegatives, MemoryPassages)` of `jdr.train.memories.load_memories` for `memory` negatives,
    mined here with the model's `params` (training queries and corpus embedded at the start of training)."""
    from jdr.negatives.sources import build_table

    # queries without a positive judgment are neither trained on nor held out (a Tevatron file cannot hold them)
    judged = [q for q, rels in data.qrels.items() if any(r > 0 for r in rels.values())]
    train_qids, dev_qids = split_dev(judged, n_dev, cfg.seed)
    train_qrels = {q: data.qrels[q] for q in train_qids}
    counts = negative_counts(cfg)
    table = None
    if counts:
        file_rows = None
        if data.negatives is not None:  # only what the table can sample: MS MARCO's triples list ~1000 a query
            max_pos = max(sum(r > 0 for r in train_qrels[q].values()) for q in train_qids)
            file_rows = data.negatives.ranked_rows(train_qids, cfg.negatives.depth + cfg.negatives.skip_top + max_pos)
        dense = {}
        if memory is not None:
            encode_corpus, encode_queries = dense_encoders(data, spec, tokenizer, sharded=True,
                                                           batch_size=cfg.negatives.refresh_batch_size)
            dense = dict(memory=memory[0], query_emb=encode_queries(params, train_qids),
                         passage_emb=encode_corpus(params))
        try:
            table = build_table(warm_start_counts(counts, cfg.negatives.warm_start), data.corpus, data.queries,
                                train_qrels, train_qids, depth=cfg.negatives.depth, seed=cfg.seed,
                                skip_top=cfg.negatives.skip_top, file_rows=file_rows, **dense)
        except ValueError as e:
            raise ConfigError(f"{data.name}: {e}") from None
    source = LabeledSource(data, train_qids, table, tokenizer, query_max_length=spec.query_max_length,
                           passage_max_length=spec.passage_max_length, global_batch_size=global_batch_size,
                           num_negatives=cfg.negatives.num if counts else 0, seed=cfg.seed, key_prefix=key_prefix,
                           memory_passages=None if memory is None else memory[1],
                           query_prefix=spec.query_prefix, passage_prefix=spec.passage_prefix)
    dev = None
    if dev_qids:
        dev = LabeledData(data.corpus, {q: data.queries[q] for q in dev_qids}, {q: data.qrels[q] for q in dev_qids},
                          None, name=f"{data.name} (dev)")
    return source, dev


def parse_members(spec: str) -> list[tuple[str, str, float]]:
    """`"jsonl:a.jsonl:2;beir:scifact:1"` -> `[("jsonl", "a.jsonl", 2.0), ("beir", "scifact", 1.0)]`."""
    members = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, sep, rest = part.partition(":")
        where, sep2, weight = rest.rpartition(":")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not sep or not sep2 or kind not in MEMBER_KINDS or not where or not w > 0:
            raise ConfigError(f"data.mixture.members: bad member {part!r}; expected 'kind:path_or_name:weight' with "
                              f"kind in {list(MEMBER_KINDS)} and a positive weight")
        members.append((kind, where, w))
    if not members:
        raise ConfigError("data.mixture.members is empty: name at least one 'kind:path_or_name:weight'")
    return members


def build_training_data(cfg, tokenizer, spec, params=None) -> TrainingData:
    """Load the data the config names and build the run's training source (see `TrainingData`). `params`: the
    model at the start of training, which mines `memory` negatives (needed only for them)."""
    batch = cfg.train.global_batch_size
    counts = negative_counts(cfg)
    if cfg.negatives.memories and "memory" not in counts:
        raise ConfigError("negatives.memories is set but no negatives come from them: set negatives.source=memory "
                          "or name memory:N in negatives.hybrid")
    if "memory" in counts and cfg.data.source in ("selfsup", "mixture"):
        raise ConfigError(f"negatives source 'memory' mines the queries of one labelled source; data.source="
                          f"{cfg.data.source} has {'none' if cfg.data.source == 'selfsup' else 'several'}")
    if cfg.data.source == "selfsup":
        return TrainingData(selfsup_source(cfg, tokenizer, spec), None, None)
    if cfg.data.source != "mixture":
        data = load_labeled(cfg.data.source, cfg)
        memory = None
        if "memory" in counts:
            from jdr.models.encoder import embedding_dim
            from jdr.train.memories import load_memories

            if params is None:
                raise ValueError("negatives source 'memory' is mined with the model: pass its params")
            memory = load_memories(cfg, data, embedding_dim(params, spec))
        source, dev = labeled_source(data, cfg, tokenizer, spec, global_batch_size=batch, n_dev=cfg.data.dev_queries,
                                     memory=memory, params=params)
        return TrainingData(source, source, dev, None if memory is None else memory[0])
    members = parse_members(cfg.data.mixture.members)
    same = cfg.data.mixture.same_source_batches
    try:
        rows = [batch] * len(members) if same else split_rows(batch, [w for _, _, w in members])
    except ValueError as e:
        raise ConfigError(f"data.mixture: {e}") from None
    built, first_dev = [], None
    for i, ((kind, where, weight), n) in enumerate(zip(members, rows)):
        name = f"{i}.{kind}"
        data = load_labeled(kind, cfg, where)
        source, dev = labeled_source(data, cfg, tokenizer, spec, global_batch_size=n,
                                     n_dev=cfg.data.dev_queries if i == 0 else 0, key_prefix=f"{name}/")
        built.append((name, source, weight))
        first_dev = first_dev if i else dev
    if cfg.negatives.refresh_every:
        raise ConfigError("negatives.refresh_every: the ANCE refresh re-mines one labelled source; a mixture has "
                          "several (train each alone, or mine negatives offline with `jdr mine`)")
    mixture = MixtureSource(built, global_batch_size=batch, seed=cfg.seed, same_source_batches=same)
    return TrainingData(mixture, built[0][1], first_dev)


SELFSUP_PAIRS = ("crop", "ict", "dropout", "title", "bm25")


def selfsup_source(cfg, tokenizer, spec) -> TrainingSource:
    """`data.source=selfsup`: a pair generator over `data.dataset`'s corpus (no queries, no qrels, no dev split)
    as a `jdr.data.selfsup.PairSource`, with random / BM25 negatives keyed by the positive's document."""
    from jdr.data.beir import load_corpus, resolve_dataset
    from jdr.data.selfsup import (BM25Pairs, CorpusTokens, CropPairs, DropoutPairs, ICTPairs, TitlePairs,
                                  parse_augmentations)
    from jdr.data.selfsup.source import PairSource, document_negatives

    s = cfg.data.selfsup
    if s.pairs not in SELFSUP_PAIRS:
        raise ConfigError(f"data.selfsup.pairs must be one of {', '.join(SELFSUP_PAIRS)}, got {s.pairs!r}")
    if cfg.negatives.refresh_every:
        raise ConfigError("negatives.refresh_every: the ANCE refresh re-mines labelled queries; data.source=selfsup "
                          "has none")
    counts = negative_counts(cfg)
    try:
        augments = {"query_augment": parse_augmentations(s.query_augment),
                    "passage_augment": parse_augmentations(s.passage_augment)}
    except ValueError as e:
        raise ConfigError(f"data.selfsup: {e}") from None
    if spec.query_prefix or spec.passage_prefix:
        raise ConfigError("model.query_prefix / model.passage_prefix: data.source=selfsup builds pairs from corpus "
                          "tokens and applies no prefix; set both to \"\"")
    corpus = load_corpus(resolve_dataset(cfg.data.dataset) / "corpus.jsonl")
    tokens = CorpusTokens.from_corpus(tokenizer, corpus)
    common = dict(query_max_length=spec.query_max_length, passage_max_length=spec.passage_max_length, **augments)
    try:
        generator = {
            "crop": lambda: CropPairs(tokens, chunk_length=s.chunk_length, ratio_min=s.ratio_min,
                                      ratio_max=s.ratio_max, **common),
            "ict": lambda: ICTPairs(tokens, remove_prob=s.remove_prob, min_query_tokens=s.min_query_tokens, **common),
            "dropout": lambda: DropoutPairs(tokens, **common),
            "title": lambda: TitlePairs(tokens, **common),
            "bm25": lambda: BM25Pairs(tokens, corpus.titles, corpus.texts, query_unit=s.query_unit,
                                      min_query_tokens=s.min_query_tokens, **common),
        }[s.pairs]()
        table = (document_negatives(corpus, counts, depth=cfg.negatives.depth, seed=cfg.seed,
                                    skip_top=cfg.negatives.skip_top) if counts else None)
        return PairSource(generator, global_batch_size=cfg.train.global_batch_size, seed=cfg.seed, negatives=table,
                          num_negatives=cfg.negatives.num if counts else 0, name=s.pairs)
    except ValueError as e:
        raise ConfigError(f"data.selfsup ({s.pairs}): {e}") from None
