"""From the config's `data` and `negatives` sections to the training source the trainer consumes.

Everything that can be wrong with the data files or these config sections fails here, in one line, before any
compile: a missing file, a bad row, an unknown source kind, a `file` negatives source on data without negatives,
an augmentation memory the model cannot search (`jdr.train.memories`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jdr.config import ConfigError
from jdr.data.labeled import LabeledData, LabeledSource
from jdr.data.mixture import MixtureSource, parse_members, split_rows
from jdr.data.source import TrainingSource
from jdr.data.split import judged_queries, split_dev
from jdr.train.encoders import dense_encoders
from jdr.train.selfsup_source import selfsup_source

SOURCE_KINDS = ("beir", "jsonl", "triplets", "msmarco", "mixture", "selfsup")
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

        # teacher scores only when an objective reads them: a mined file's scores are the retriever's
        return load_tevatron(
            _path(where or cfg.data.jsonl.path, "data.jsonl.path"), scores=cfg.train.objective == "distill"
        )
    if kind == "triplets":
        from jdr.data.triplets import load_triplets

        return load_triplets(_path(where or cfg.data.triplets.path, "data.triplets.path"))
    if kind == "msmarco":
        from jdr.data.msmarco import load_msmarco_training

        m = cfg.data.msmarco
        return load_msmarco_training(
            _path(m.collection, "data.msmarco.collection"),
            _path(m.queries, "data.msmarco.queries"),
            _path(m.qrels, "data.msmarco.qrels"),
            m.triples or None,
        )
    raise ConfigError(f"data.source must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")


def _path(value: str, key: str) -> str:
    if not value:
        raise ConfigError(f"{key} is empty: set it to the training file")
    return value


def labeled_source(
    data: LabeledData,
    cfg,
    tokenizer,
    spec,
    *,
    global_batch_size: int,
    n_dev: int,
    key_prefix: str = "",
    memory=None,
    params=None,
) -> tuple[LabeledSource, LabeledData | None]:
    """The source over `data` (dev queries held out) with its initial negatives table, and the dev split.
    `memory`: `(MemoryNegatives, MemoryPassages)` of `jdr.train.memories.load_memories` for `memory` negatives,
    mined here with the model's `params` (training queries and corpus embedded at the start of training)."""
    from jdr.negatives.sources import build_table

    train_qids, dev_qids = split_dev(judged_queries(data.qrels), n_dev, cfg.seed)
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
            encode_corpus, encode_queries = dense_encoders(
                data, spec, tokenizer, sharded=True, batch_size=cfg.negatives.refresh_batch_size
            )
            dense = dict(
                memory=memory[0], query_emb=encode_queries(params, train_qids), passage_emb=encode_corpus(params)
            )
        try:
            table = build_table(
                warm_start_counts(counts, cfg.negatives.warm_start),
                data.corpus,
                data.queries,
                train_qrels,
                train_qids,
                depth=cfg.negatives.depth,
                seed=cfg.seed,
                skip_top=cfg.negatives.skip_top,
                file_rows=file_rows,
                bm25_preset=cfg.negatives.bm25_preset,
                **dense,
            )
        except ValueError as e:
            raise ConfigError(f"{data.name}: {e}") from None
    if data.teacher is not None:  # every passage a group can draw is scored, else one line naming its line
        data.teacher.check(train_qids, data.qrels, data.negatives, data.corpus.ids, cfg.negatives.num)
    source = LabeledSource(
        data,
        train_qids,
        table,
        tokenizer,
        query_max_length=spec.query_max_length,
        passage_max_length=spec.passage_max_length,
        global_batch_size=global_batch_size,
        num_negatives=cfg.negatives.num if counts else 0,
        seed=cfg.seed,
        key_prefix=key_prefix,
        memory_passages=None if memory is None else memory[1],
        query_prefix=spec.query_prefix,
        passage_prefix=spec.passage_prefix,
    )
    dev = None
    if dev_qids:
        dev = LabeledData(
            data.corpus,
            {q: data.queries[q] for q in dev_qids},
            {q: data.qrels[q] for q in dev_qids},
            None,
            name=f"{data.name} (dev)",
        )
    return source, dev


def build_training_data(cfg, tokenizer, spec, params=None) -> TrainingData:
    """Load the data the config names and build the run's training source (see `TrainingData`). `params`: the
    model at the start of training, which mines `memory` negatives (needed only for them)."""
    batch = cfg.train.global_batch_size
    counts = negative_counts(cfg)
    if cfg.negatives.memories and "memory" not in counts:
        raise ConfigError(
            "negatives.memories is set but no negatives come from them: set negatives.source=memory "
            "or name memory:N in negatives.hybrid"
        )
    if "memory" in counts and cfg.data.source in ("selfsup", "mixture"):
        raise ConfigError(
            f"negatives source 'memory' mines the queries of one labelled source; data.source="
            f"{cfg.data.source} has {'none' if cfg.data.source == 'selfsup' else 'several'}"
        )
    if cfg.data.source == "selfsup":
        return TrainingData(selfsup_source(cfg, tokenizer, spec, counts), None, None)
    if cfg.data.source != "mixture":
        data = load_labeled(cfg.data.source, cfg)
        memory = None
        if "memory" in counts:
            from jdr.models.encoder import embedding_dim
            from jdr.train.memories import load_memories

            if params is None:
                raise ValueError("negatives source 'memory' is mined with the model: pass its params")
            memory = load_memories(cfg, data, embedding_dim(params, spec))
        source, dev = labeled_source(
            data,
            cfg,
            tokenizer,
            spec,
            global_batch_size=batch,
            n_dev=cfg.data.dev_queries,
            memory=memory,
            params=params,
        )
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
        source, dev = labeled_source(
            data,
            cfg,
            tokenizer,
            spec,
            global_batch_size=n,
            n_dev=cfg.data.dev_queries if i == 0 else 0,
            key_prefix=f"{name}/",
        )
        built.append((name, source, weight))
        first_dev = first_dev if i else dev
    if cfg.negatives.refresh_every:
        raise ConfigError(
            "negatives.refresh_every: the ANCE refresh re-mines one labelled source; a mixture has "
            "several (train each alone, or mine negatives offline with `jdr mine`)"
        )
    mixture = MixtureSource(built, global_batch_size=batch, seed=cfg.seed, same_source_batches=same)
    return TrainingData(mixture, built[0][1], first_dev)
