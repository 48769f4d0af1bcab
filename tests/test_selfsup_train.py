"""Self-supervised training end to end: `jdr train` with `data.source=selfsup` (and MoCo) takes a RANDOM-init tiny
BERT and a raw corpus, no queries or qrels, and learns to retrieve; exact resume of the self-supervised source."""

import json
import runpy

import jax
import numpy as np
import pytest

from jdr.config import load_config
from jdr.data.beir import load_beir
from jdr.data.selfsup import CorpusTokens, CropPairs
from jdr.data.selfsup.source import PairSource
from jdr.evaluate import compute_metrics, retrieve
from jdr.models.hf import load
from jdr.models.testing import DEFAULT_WORDS, build_wordpiece_tokenizer, tiny_vocab
from jdr.models.workdir import load_workdir
from jdr.negatives.documents import document_negatives
from jdr.train.trainer import train

N_DOCS = 16


def write_topic_corpus(path, seed=0):
    """A BEIR dir of N_DOCS documents, each with its own 3 topic words hidden among words shared by every
    document (6 of each sentence's 8 words), and one test query per document: 2 of its topic words and 4 shared words,
    in a sentence that is not in the corpus. Retrieving it needs the model to weigh topic words over shared ones,
    which a random-init encoder does not do and contrastive training on the corpus teaches."""
    r = np.random.default_rng(seed)
    words = [w for w in DEFAULT_WORDS if len(w) > 2]
    topics = np.asarray(words[: 3 * N_DOCS]).reshape(N_DOCS, 3)
    shared = words[3 * N_DOCS :]
    path.mkdir(parents=True)
    (path / "qrels").mkdir()
    with open(path / "corpus.jsonl", "w") as f:
        for d in range(N_DOCS):
            sentences = [
                " ".join(r.permutation(list(r.choice(topics[d], 2)) + list(r.choice(shared, 6)))).capitalize() + "."
                for _ in range(6)
            ]
            f.write(json.dumps({"_id": f"d{d}", "title": "", "text": " ".join(sentences)}) + "\n")
    with open(path / "queries.jsonl", "w") as f, open(path / "qrels" / "test.tsv", "w") as q:
        q.write("query-id\tcorpus-id\tscore\n")
        for d in range(N_DOCS):
            text = " ".join(r.permutation(list(r.choice(topics[d], 2, replace=False)) + list(r.choice(shared, 4))))
            f.write(json.dumps({"_id": f"q{d}", "text": text}) + "\n")
            q.write(f"q{d}\td{d}\t1\n")
    return path


@pytest.fixture(scope="module")
def topic_beir(tmp_path_factory):
    return write_topic_corpus(tmp_path_factory.mktemp("topics") / "beir")


def _cfg(tiny_model, data, *overrides):
    return load_config(
        "configs/tiny.py",
        [
            f"model.path={tiny_model}",
            f"data.dataset={data}",
            "data.source=selfsup",
            "negatives.source=none",
            "negatives.num=0",
            "train.steps=30",
            "train.lr=2e-3",
            "train.temperature=0.1",
            "data.dev_queries=0",
            "eval.every=0",
            "checkpoint.every=0",
            "export.at_end=false",
            "log.every=1",
            "model.passage_max_length=48",
            *overrides,
        ],
    )


def _mrr(params, spec, tok, data):
    run = retrieve(params, spec, tok, data.corpus, data.queries, k=N_DOCS, progress=False)
    return compute_metrics(data.qrels, run)["mrr@10"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        [
            "data.selfsup.pairs=crop",
            "data.selfsup.chunk_length=32",
            "data.selfsup.ratio_min=0.2",
            "data.selfsup.ratio_max=0.5",
            "data.selfsup.query_augment=delete:0.1",
        ],
        ["data.selfsup.pairs=ict", "moco.enabled=true", "moco.momentum=0.9", "moco.queue_size=64"],
    ],
    ids=["crop", "ict+moco"],
)
def test_random_init_tiny_bert_learns_to_retrieve_from_a_raw_corpus(tiny_model, topic_beir, tmp_path, overrides):
    data = load_beir(topic_beir, "test")
    params, spec, tok = load(tiny_model)
    before = _mrr(params, spec, tok, data)
    workdir = tmp_path / "run"
    final = train(_cfg(tiny_model, topic_beir, *overrides), workdir, progress=False)
    losses = [
        json.loads(x)["train/loss"] for x in (workdir / "metrics.jsonl").read_text().splitlines() if "train/loss" in x
    ]
    # Against the worst early 5-step window: a MoCo loss first rises while real keys replace the queue's noise.
    peak = max(np.mean(losses[i : i + 5]) for i in range(6))
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * peak, losses
    trained, tspec, ttok, _ = load_workdir(workdir)
    after = _mrr(trained, tspec, ttok, data)
    chance = np.mean([1.0 / r for r in range(1, 11)]) * 10 / N_DOCS  # expected MRR@10 of a random ranking
    assert final["test/mrr@10"] == pytest.approx(after, abs=1e-6)
    assert after > 2 * chance and after > before + 0.2, (chance, before, after)


def test_pair_source_batches_resume_and_negatives(tmp_path):
    from test_selfsup_data import _toy_texts

    from jdr.data.beir import Corpus

    ids, titles, texts = _toy_texts()
    tokens = CorpusTokens.from_texts(build_wordpiece_tokenizer(tiny_vocab(), 512), ids, titles, texts)
    corpus = Corpus(ids=list(ids), titles=titles, texts=texts, index={d: i for i, d in enumerate(ids)})
    table = document_negatives(corpus, {"bm25": 1, "random": 1}, depth=5, seed=0)

    def source():
        return PairSource(
            CropPairs(tokens, chunk_length=24), global_batch_size=8, seed=3, negatives=table, num_negatives=2
        )

    def flat(batch):
        return [(e.query.tolist(), [p.tolist() for p in e.passages], e.passage_keys) for e in batch]

    a = source()
    per_epoch = a.generator.epoch_size(3, 0) // 8
    batches = [flat(a.next_batch()) for _ in range(per_epoch + 2)]  # crosses into epoch 1
    assert a.state()["epoch"] == 1 and a.state()["index"] == 2
    for batch in batches:
        for _, passages, keys in batch:
            assert len(passages) == 3 and len(set(keys)) == 3  # positive + 2 distinct negatives
    b = source()
    for _ in range(3):
        b.next_batch()
    c = source()
    c.restore(json.loads(json.dumps(b.state())))
    assert [flat(c.next_batch()) for _ in range(per_epoch - 1)] == batches[3 : per_epoch + 2]
    with pytest.raises(ValueError, match="generator"):
        c.restore({**b.state(), "generator": "ict"})
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        PairSource(CropPairs(tokens, chunk_length=24), global_batch_size=10_000, seed=0)


# The SciFact zero-label rows (configs/scifact_selfsup.py's ROWS, run by benchmarks/zero_label.py): each must
# load and validate (no compile, no data read).
SCIFACT_ROWS = runpy.run_path("configs/scifact_selfsup.py")["ROWS"]


@pytest.mark.parametrize("row", sorted(SCIFACT_ROWS))
def test_scifact_selfsup_rows_are_valid_configs(row):
    from jdr.train.trainer import _validate

    cfg = load_config("configs/scifact_selfsup.py", SCIFACT_ROWS[row])
    _validate(cfg)
    assert cfg.data.source == "selfsup" and cfg.data.dev_queries == 0 and cfg.train.steps == 100


def test_dropout_views_get_two_different_masks(tiny_model):
    """SimCSE's positive pair is the same text under two dropout masks: with the real model and its hashed Dropout
    (jdr/models/dropout.py), the train step's query and passage encodes of one text differ (it splits one key per
    step and device into two), and the same step key gives the same views again."""
    import optax
    from test_train_step import _batch, _shard

    from jdr.models import encoder
    from jdr.train.state import TrainState
    from jdr.train.step import make_train_step, replicate

    params, spec, _ = load(tiny_model)
    assert spec.normalize and spec.bert.hidden_dropout_prob > 0  # unit embeddings: q.p = 1 iff the views agree

    def encode(p, ids, mask, tower, deterministic, rng):
        return encoder.encode(p, spec, ids, mask, tower=tower, deterministic=deterministic, rng=rng)

    batch = _batch(0, 4, 1, vocab=spec.bert.vocab_size)
    batch["passage_ids"], batch["passage_mask"] = batch["query_ids"], batch["query_mask"]  # the same text twice
    tx = optax.sgd(0.0)
    devices = jax.local_devices()[:1]
    step = jax.pmap(
        make_train_step(encode, loss_name="info_nce", loss_kwargs={"temperature": 1.0}, tx=tx),
        axis_name="batch",
        in_axes=(0, 0, None),
        devices=devices,
    )
    state = replicate(TrainState.create(params, tx), devices)

    def pos_score(key):
        return float(step(state, _shard(batch, 1), key)[1]["pos_score"][0])

    views = pos_score(jax.random.key(0))
    assert views < 0.999, views  # one shared mask would give q == p, q.p = 1
    assert pos_score(jax.random.key(0)) == views  # same key, same masks
    assert pos_score(jax.random.key(1)) != views
    dropped = jax.jit(lambda key: encode(params, batch["query_ids"], batch["query_mask"], "query", False, key))
    a, b = dropped(jax.random.key(0)), dropped(jax.random.key(1))
    assert not np.allclose(a, b) and np.array_equal(a, dropped(jax.random.key(0)))
