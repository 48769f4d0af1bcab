"""Synthetic data for tests and experiments: a BEIR dataset with many shared positives per query.

`write_topic_beir` builds the situation in-batch false negatives come from: documents grouped in topics, and
every query of a topic relevant to EVERY document of the topic (tens of positives per query, as in some BEIR
sets). A batch of (query, positive) pairs drawn from few topics then holds, for most queries, other passages
the labels call relevant to them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def topic_words(topics: int, words_per_topic: int = 8, filler: int = 40) -> tuple[list[list[str]], list[str]]:
    """`(topic_vocab[t] = its words, filler words shared by all topics)`: short made-up words ("ta3", "zq")
    that a tiny WordPiece vocab can hold (pass them to `jdr.models.testing.write_tiny_model(vocab_words=...)`)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    topic = [
        [f"{letters[t % 26]}{letters[(t // 26 + j) % 26]}{j}" for j in range(words_per_topic)] for t in range(topics)
    ]
    fill = [f"z{letters[i % 26]}{letters[i // 26]}" for i in range(filler)]
    return topic, fill


def write_topic_beir(
    path: str | os.PathLike,
    *,
    topics: int = 10,
    docs_per_topic: tuple[int, int] = (20, 40),
    train_queries_per_topic: int = 8,
    test_queries_per_topic: int = 3,
    doc_topic_words: int = 4,
    doc_filler_words: int = 8,
    query_topic_words: int = 2,
    query_filler_words: int = 2,
    seed: int = 0,
) -> dict:
    """Write a BEIR dir (corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv) of `topics` topics with
    `docs_per_topic` documents each (uniform in the inclusive range); every query of a topic is relevant to all
    of its documents. Texts are topic words plus filler words in random order. Returns the facts (sizes, the
    words, positives per query) as a dict."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    vocab, filler = topic_words(topics)

    def text(t: int, n_topic: int, n_fill: int) -> str:
        words = list(rng.choice(vocab[t], n_topic, replace=False)) + list(rng.choice(filler, n_fill))
        return " ".join(rng.permutation(words).tolist())

    docs = {
        t: [f"t{t}d{j}" for j in range(int(rng.integers(docs_per_topic[0], docs_per_topic[1] + 1)))]
        for t in range(topics)
    }
    with open(path / "corpus.jsonl", "w", encoding="utf-8") as f:
        for t, ids in docs.items():
            for d in ids:
                f.write(json.dumps({"_id": d, "title": "", "text": text(t, doc_topic_words, doc_filler_words)}) + "\n")
    splits = {"train": train_queries_per_topic, "test": test_queries_per_topic}
    with open(path / "queries.jsonl", "w", encoding="utf-8") as fq:
        for split, per_topic in splits.items():
            with open(path / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fr:
                fr.write("query-id\tcorpus-id\tscore\n")
                for t in range(topics):
                    for j in range(per_topic):
                        qid = f"{split}-t{t}q{j}"
                        fq.write(
                            json.dumps({"_id": qid, "text": text(t, query_topic_words, query_filler_words)}) + "\n"
                        )
                        fr.writelines(f"{qid}\t{d}\t1\n" for d in docs[t])
    sizes = [len(v) for v in docs.values()]
    return {
        "topics": topics,
        "documents": sum(sizes),
        "train_queries": topics * train_queries_per_topic,
        "test_queries": topics * test_queries_per_topic,
        "positives_per_query": [min(sizes), max(sizes)],
        "words": [w for ws in vocab for w in ws] + filler,
    }
