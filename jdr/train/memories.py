"""From `negatives.memories` / `memory_mix` / `memory_probe` to the `memory` negatives source of a run: the fixed
augmentation memories opened and checked against the model, and their documents' texts for the training source.

Every problem is one `ConfigError` line naming the key, the memory and the file, before anything is encoded or
compiled: a bad entry, a missing index / store / corpus, a document the corpus lacks, a width or metric the model
does not score with, a memory the mix does not know, quotas the table cannot sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jdr.config import ConfigError
from jdr.data.beir import Corpus
from jdr.data.labeled import LabeledData, MemoryPassages
from jdr.negatives.memory import TRAIN, MemoryNegatives, parse_mix

KEY = "negatives.memories"


def parse_memories(spec: str) -> list[tuple[str, str, str]]:
    """`"wiki=/m/wiki.faiss,/m/wiki/corpus.jsonl;news=/m/news_store,/m/news"` -> `[(name, index, corpus), ...]`."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, rest = part.partition("=")
        index, sep2, corpus = rest.rpartition(",")
        name, index, corpus = name.strip(), index.strip(), corpus.strip()
        if not sep or not sep2 or not name or not index or not corpus:
            raise ConfigError(
                f"{KEY}: bad entry {part!r}; expected 'name=INDEX_OR_STORE,CORPUS' (CORPUS: its "
                "corpus.jsonl or BEIR dir), entries separated by ';'"
            )
        if name == TRAIN or ":" in name or name in [n for n, _, _ in out]:
            raise ConfigError(
                f"{KEY}: memory name {name!r} must be unique, free of ':' and not {TRAIN!r} (the training corpus)"
            )
        out.append((name, index, corpus))
    return out


class _MemoryTexts(Sequence[str]):
    """The augmentation memories' passages in table row order, joined on access (BEIR's title + " " + text)."""

    def __init__(self, parts: Sequence[tuple[Corpus, np.ndarray]]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(rows) for _, rows in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        p = int(np.searchsorted(self.starts, i, side="right")) - 1
        corpus, rows = self.parts[p]
        return corpus.passage(int(rows[i - self.starts[p]]))


def _open(name: str, index: str, corpus_path: str, cfg, dim: int):
    """One memory and the corpus rows of its documents, or a ConfigError naming what is wrong (the cheap checks
    first: a memory of the wrong width fails before its corpus is read)."""
    from jdr.data.beir import load_corpus
    from jdr.index.memories import Memory, ids_path, is_store

    where = f"{KEY}: {name}"
    if not Path(index).exists():
        raise ConfigError(f"{where}: {index}: no such index file, SPANN dir or embedding store")
    corpus_file = Path(corpus_path) / "corpus.jsonl" if Path(corpus_path).is_dir() else Path(corpus_path)
    if not corpus_file.is_file():
        raise ConfigError(f"{where}: {corpus_file}: no such corpus file")
    try:
        memory = Memory.load(f"{name}={index}", factory=cfg.negatives.refresh_factory)
        if memory.index.d != dim:
            raise ConfigError(
                f"{where} holds {memory.index.d}-dim vectors but the model embeds to {dim}: encode "
                "the memory with a model of this width (jdr encode)"
            )
        if memory.metric != "ip":
            raise ConfigError(
                f"{where} ranks by {memory.metric}, the model scores by inner product: build its "
                "index with the ip metric"
            )
        corpus = load_corpus(corpus_file)
    except ConfigError:
        raise
    except (ValueError, OSError) as e:  # DataError is a ValueError naming file and line
        raise ConfigError(f"{where}: {str(e).strip().splitlines()[0]}") from None
    missing = next((d for d in memory.doc_ids if d not in corpus.index), None)
    if missing is not None:
        ids_file = Path(index) / "ids.txt" if is_store(index) else ids_path(index)
        raise ConfigError(f"{where}: doc id {missing!r} of {ids_file} is not in {corpus_file}")
    rows = np.fromiter((corpus.index[d] for d in memory.doc_ids), dtype=np.int64, count=len(memory.doc_ids))
    probe = cfg.negatives.memory_probe
    return memory.with_probe(probe if probe > 0 else None), (corpus, rows)


def load_memories(cfg, data: LabeledData, dim: int) -> tuple[MemoryNegatives, MemoryPassages]:
    """The run's augmentation memories (config `negatives.memories`, mixed per `negatives.memory_mix`) over the
    training corpus of `data`, checked against the model's embedding width `dim`, and their passages."""
    entries = parse_memories(cfg.negatives.memories)
    if not entries:
        raise ConfigError(
            f"negatives source 'memory' needs {KEY} (augmentation memories 'name=INDEX,CORPUS'; for "
            "the training corpus alone, mine 'ann' negatives)"
        )
    try:
        mix = parse_mix(cfg.negatives.memory_mix)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if mix is not None and sum(mix.values()) > cfg.negatives.depth:
        raise ConfigError(
            f"negatives.memory_mix quotas sum to {sum(mix.values())}, more than negatives.depth="
            f"{cfg.negatives.depth} the table samples from"
        )
    known = [TRAIN] + [name for name, _, _ in entries]
    unknown = sorted(set(mix or ()) - set(known))
    if unknown:
        raise ConfigError(f"negatives.memory_mix: unknown memory {unknown[0]!r}; memories are {', '.join(known)}")
    memories, parts = [], []
    for name, index, corpus in entries:
        memory, part = _open(name, index, corpus, cfg, dim)
        memories.append(memory)
        parts.append(part)
    try:
        negatives = MemoryNegatives(
            data.corpus.ids, memories, mix=mix, factory=cfg.negatives.refresh_factory, corpus_index=data.corpus.index
        )
    except ValueError as e:
        raise ConfigError(f"{KEY}: {e}") from None
    return negatives, MemoryPassages(negatives.ids, _MemoryTexts(parts))
