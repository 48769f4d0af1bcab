"""LTRe / ADORE (Zhan et al. 2020, 2021): learn to retrieve against a fixed index. Documents were encoded once by
a frozen passage tower into a `jdr.index.fixed.FixedIndex`; only the query tower trains (untied towers). Each step
embeds the batch's queries with the current query tower, searches the index for the top-k, appends the positives
the search missed, and differentiates a ranking loss over that retrieved list (`jdr.losses.RETRIEVAL`: ADORE's
LambdaRank-weighted pairwise loss, or a listwise softmax). No negatives are sampled: the whole corpus competes.

Where the search runs (`search=`); both compute the same update (tests/test_ltre.py):
  * "callback" (default): inside the compiled step through `jax.pure_callback` on the step's own (detached) query
    embeddings — one query forward per step.
  * "host": between steps — a separate compiled forward embeds the queries with the same parameters and dropout
    key, the host searches, and the step receives the candidate arrays in its batch: a second query forward per
    step and a device->host wait before each step, but no host callback in the compiled program (for runtimes
    where callbacks are slow or unsupported).
  Measured (benchmarks/results/ltre_search.md, MiniLM, batch 32 x 64 tokens, 5 183 docs, top 200, alternating in
  one process, 2-core CPU under load): callback 5.9 s/step, host 7.9 s/step (1.33x) — the search itself takes
  0.03-0.06 s, the difference is the second forward. On this CPU backend neither mode overlaps the host with the
  device: a program holding a host callback runs synchronously in the dispatching thread, and host mode blocks on
  the embeddings, which wait for the previous step. So callback keeps the loop busier: more steps per second.

Per batch the step needs (per device, leading device axis when pmapped): `query_ids[B, Lq]`, `query_mask[B, Lq]`
int32 and `positive_rows[B, P]` int32 — each query's positive documents as index rows, -1 padded
(`FixedIndex.positive_rows`), P = `ltre.max_positives`.

Config (`ltre.*`, see jdr/config.py; `check_ltre_config` lists the requirements): `model.tied=False`, no sampled
negatives (`negatives.num=0`), no GradCache or EBR, one labelled training source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jdr.index.fixed import CANDIDATE_KEYS, FixedIndex
from jdr.losses import RETRIEVAL
from jdr.train.objectives.base import EncodeFn, Objective, register

__all__ = [
    "SEARCH_MODES",
    "Ltre",
    "query_key",
    "freeze_passage_tower",
    "pmap_ltre_step",
    "build_fixed_index",
    "check_ltre_config",
    "check_positive_slots",
    "RetrievalBatches",
]

SEARCH_MODES = ("callback", "host")
LTRE_BATCH_KEYS = ("query_ids", "query_mask", "positive_rows")


def query_key(rng: jax.Array, step, axis_name: str) -> jax.Array:
    """The dropout key of a step's query encode: `make_train_step`'s derivation (fold in the step and the device's
    axis index) then `Ltre.loss`'s (split, first half). The host-search embedder uses it too, so the searched
    embedding is exactly the one the loss differentiates."""
    rng = jax.random.fold_in(jax.random.fold_in(rng, step), lax.axis_index(axis_name))
    return jax.random.split(rng)[0]


def freeze_passage_tower(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` for the "query" subtree of untied params, `optax.set_to_zero` for "passage" (no update, no weight
    decay, no optimizer state): the passage tower that encoded the index stays bit-identical. A shared "dense"
    layer (a whitened model: one Dense after pooling for both towers) belongs to that passage tower too, so it is
    frozen with it; only the query tower's BERT trains."""

    def labels(params):
        if not {"query", "passage"} <= set(params) or not set(params) <= {"query", "passage", "dense"}:
            raise ValueError(f"LTRe trains the query tower of untied params (model.tied=False); got {sorted(params)}")
        return {"query": "train", "passage": "frozen", **({"dense": "frozen"} if "dense" in params else {})}

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _retrieval_metrics(relevant, top_k: int) -> dict:
    """MRR@10 and recall@top_k of the index's own ranking (appended positives do not count as found)."""
    found = relevant[:, :top_k]
    first = jnp.argmax(found, axis=1)
    hit10 = jnp.any(found[:, :10], axis=1)
    return {
        "retrieved_mrr@10": jnp.mean(jnp.where(hit10, 1.0 / (first + 1.0), 0.0)),
        f"retrieved_recall@{top_k}": jnp.mean(jnp.any(found, axis=1).astype(jnp.float32)),
    }


@register
class Ltre(Objective):
    """`index`: the `FixedIndex` (set by `attach`; None in host mode is fine for tests that feed candidates),
    `top_k`, `loss_name` (a key of `jdr.losses.RETRIEVAL`), `loss_kwargs` (`metric_cut` / `temperature`),
    `search` ("callback" | "host"). Scores are `q . cand_emb` in float32. Aux: the loss's, `retrieved_mrr@10`,
    `retrieved_recall@{top_k}`. Optimizer: `freeze_passage_tower(tx)`."""

    name = "ltre"

    def __init__(
        self,
        *,
        top_k: int,
        loss_name: str,
        loss_kwargs: dict,
        search: str = "callback",
        index: FixedIndex | None = None,
        max_positives: int = 8,
        config=None,
    ):
        if loss_name not in RETRIEVAL:
            raise ValueError(f"ltre.loss: {loss_name!r} is not one of {', '.join(RETRIEVAL)}")
        if search not in SEARCH_MODES:
            raise ValueError(f"ltre.search: {search!r} is not one of {', '.join(SEARCH_MODES)}")
        self.top_k, self.loss_fn, self.loss_kwargs = top_k, RETRIEVAL[loss_name], dict(loss_kwargs)
        self.search, self.index, self.max_positives, self.config = search, index, max_positives, config
        self.batch_keys = LTRE_BATCH_KEYS + (CANDIDATE_KEYS if search == "host" else ())

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        check_ltre_config(cfg)

    @classmethod
    def from_config(cls, cfg) -> Ltre:
        ltre = cfg.ltre
        kwargs = (
            {"metric_cut": ltre.metric_cut} if ltre.loss == "lambdarank" else {"temperature": cfg.train.temperature}
        )
        return cls(
            top_k=ltre.top_k,
            loss_name=ltre.loss,
            loss_kwargs=kwargs,
            search=ltre.search,
            max_positives=ltre.max_positives,
            config=ltre,
        )

    def optimizer(self, tx):
        return freeze_passage_tower(tx)

    def attach(self, run, *, progress: bool = True) -> None:
        """Build the fixed index (`build_fixed_index`) from the run's initial params; batches become
        `RetrievalBatches` over it."""
        self.index = build_fixed_index(
            self.config,
            run.params,
            run.spec,
            run.tokenizer,
            run.training.labeled.data.corpus,
            batch_size=run.cfg.eval.batch_size,
            progress=progress,
        )
        check_positive_slots(self.index, run.training.labeled, self.max_positives)  # every query, before compiling
        run.batches = RetrievalBatches(run.batches, self.index, self.max_positives)

    def _search_in_step(self, q, positive_rows):
        if self.index is None:
            raise ValueError("ltre: search='callback' needs the FixedIndex")
        b, slots = positive_rows.shape
        c = self.top_k + slots
        shapes = {
            "cand_emb": jax.ShapeDtypeStruct((b, c, q.shape[1]), jnp.float32),
            "cand_relevant": jax.ShapeDtypeStruct((b, c), jnp.bool_),
            "cand_valid": jax.ShapeDtypeStruct((b, c), jnp.bool_),
        }
        index, top_k = self.index, self.top_k
        return jax.pure_callback(lambda qs, pos: index.candidates(qs, pos, top_k), shapes, q, positive_rows)

    def loss(self, encode, params, state, batch, rng, *, axis_name):
        key = jax.random.split(rng)[0]  # `query_key`: the host-search embedder derives the same key
        q = encode(params, batch["query_ids"], batch["query_mask"], "query", key)
        cands = (
            {k: batch[k] for k in CANDIDATE_KEYS}
            if self.search == "host"
            else self._search_in_step(lax.stop_gradient(q), batch["positive_rows"])
        )
        scores = jnp.einsum("bh,bch->bc", q.astype(jnp.float32), cands["cand_emb"])
        loss, aux = self.loss_fn(scores, cands["cand_relevant"], cands["cand_valid"], **self.loss_kwargs)
        return loss, {**aux, **_retrieval_metrics(cands["cand_relevant"], self.top_k)}, {}

    def wrap_pmapped(self, step, encode, *, axis_name: str):
        """Host search: embed the queries with the step's parameters and key, search on the host, then step."""
        if self.search == "callback":
            return step

        def embed_queries(state, batch, rng):
            key = query_key(rng, state.step, axis_name)
            return encode(state.params, batch["query_ids"], batch["query_mask"], "query", key)

        embed = jax.pmap(embed_queries, axis_name=axis_name, in_axes=(0, 0, None))
        index, top_k = self.index, self.top_k

        def search_then_step(state, batch, rng):
            queries = {k: batch[k] for k in ("query_ids", "query_mask")}
            q = np.asarray(embed(state, queries, rng))  # [devices, B, H]; blocks until the embeddings exist
            per_device = [index.candidates(q[d], np.asarray(batch["positive_rows"][d]), top_k) for d in range(len(q))]
            cands = {k: np.stack([c[k] for c in per_device]) for k in CANDIDATE_KEYS}
            return step(state, {**batch, **cands}, rng)

        return search_then_step


def pmap_ltre_step(
    encode_fn: EncodeFn,
    *,
    index: FixedIndex,
    top_k: int,
    loss_name: str,
    loss_kwargs: dict,
    tx: optax.GradientTransformation,
    search: str = "callback",
    lr_at: Callable | None = None,
    axis_name: str = "batch",
    dropout: bool = True,
) -> Callable:
    """The LTRe step as the training loop calls it: `step(state, batch, rng) -> (state, metrics)` over the local
    devices (state replicated and donated, batch with a leading device axis, one rng), whichever `search` mode:
    `make_train_step` with the `Ltre` objective. `tx` should come from `freeze_passage_tower`."""
    from jdr.train.step import bind_dropout, make_train_step, pmap_train_step

    objective = Ltre(top_k=top_k, loss_name=loss_name, loss_kwargs=loss_kwargs, search=search, index=index)
    step = pmap_train_step(
        make_train_step(encode_fn, objective, tx=tx, lr_at=lr_at, axis_name=axis_name, dropout=dropout), axis_name
    )
    return objective.wrap_pmapped(step, bind_dropout(encode_fn, dropout), axis_name=axis_name)


def build_fixed_index(
    ltre_cfg, params, spec, tokenizer, corpus, *, batch_size: int = 128, progress: bool = True
) -> FixedIndex:
    """The fixed index of an `ltre` config section: `ltre.index` (a faiss file; reconstructions scored), else the
    `ltre.embeddings` store, else the corpus encoded now by the frozen passage tower of `params` (both indexed with
    `ltre.factory`, exact vectors scored). `corpus` is a `jdr.data.beir.Corpus`; its ids must match the index's."""
    from jdr.errors import DataError
    from jdr.index.store import load_embeddings
    from jdr.models.inference import encode_texts

    nprobe = ltre_cfg.nprobe or None
    if ltre_cfg.index:
        index = FixedIndex.load(ltre_cfg.index, nprobe=nprobe)
        where = Path(f"{ltre_cfg.index}.ids.txt")
    else:
        if ltre_cfg.embeddings:
            emb, ids = load_embeddings(ltre_cfg.embeddings)
            where = Path(ltre_cfg.embeddings) / "ids.txt"
        else:
            emb = encode_texts(
                params, spec, tokenizer, corpus.passages(), tower="passage", batch_size=batch_size, progress=progress
            )
            ids, where = list(corpus.ids), Path("corpus")
        index = FixedIndex.from_embeddings(emb, ids, factory=ltre_cfg.factory, nprobe=nprobe)
    if len(index.ids) != len(corpus.ids) or set(index.ids) != set(corpus.ids):
        raise DataError(where, f"the index's {len(index.ids)} doc ids are not the corpus's {len(corpus.ids)} ids")
    return index


def check_ltre_config(cfg) -> None:
    """One-line `ValueError`s, before anything is compiled, for an `ltre` section that cannot run."""
    ltre = cfg.ltre
    if not (ltre.enabled or cfg.train.objective == "ltre"):
        return
    checks = [
        (
            not cfg.model.tied,
            "ltre.enabled needs model.tied=False (the query tower trains, the passage tower is frozen)",
        ),
        (ltre.top_k >= 1, f"ltre.top_k must be >= 1, got {ltre.top_k}"),
        (ltre.max_positives >= 1, f"ltre.max_positives must be >= 1, got {ltre.max_positives}"),
        (ltre.loss in RETRIEVAL, f"ltre.loss must be one of {', '.join(RETRIEVAL)}, got {ltre.loss!r}"),
        (ltre.search in SEARCH_MODES, f"ltre.search must be one of {', '.join(SEARCH_MODES)}, got {ltre.search!r}"),
        (ltre.metric_cut >= 0, f"ltre.metric_cut must be >= 0 (0 = no cut), got {ltre.metric_cut}"),
        (ltre.nprobe >= 0, f"ltre.nprobe must be >= 0 (0 = faiss default), got {ltre.nprobe}"),
        (not ltre.index or not ltre.embeddings, "ltre.index and ltre.embeddings are exclusive: set one"),
        (cfg.train.grad_cache_chunk == 0, "ltre.enabled encodes no passages: set train.grad_cache_chunk=0"),
        (cfg.train.hard_in_batch_k == 0, "ltre.enabled has no in-batch passages: set train.hard_in_batch_k=0"),
        (
            cfg.negatives.source == "none" or cfg.negatives.num == 0,
            "ltre.enabled scores the retrieved list, not sampled negatives: set negatives.num=0",
        ),
        (
            cfg.data.source not in ("mixture", "selfsup"),
            "ltre.enabled needs one labelled training source (its qrels name the positives in the index)",
        ),
        (not cfg.moco.enabled, "ltre.enabled and moco.enabled exclude each other"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for key in ("index", "embeddings"):
        path = getattr(ltre, key)
        if path and not Path(path).exists():
            raise ValueError(f"ltre.{key}: {path} does not exist")


def check_positive_slots(index: FixedIndex, source, max_positives: int) -> None:
    """At setup, before anything compiles: every training query of the labelled `source` (`train_qids`,
    `relevant(qid)`, the keys `RetrievalBatches` looks up) fits its positives in `max_positives` slots and names
    only documents in the index. Otherwise one `ValueError` naming the query (its batch may first be drawn hours
    into the run)."""
    for qid in source.train_qids:
        keys = source.relevant(qid)
        if len(keys) > max_positives:
            raise ValueError(
                f"training qrels: query {qid!r} has {len(keys)} positives, more than "
                f"ltre.max_positives={max_positives} (raise it)"
            )
        index.positive_rows([sorted(keys)], max_positives, where=f"training qrels of query {qid!r}")


class RetrievalBatches:
    """The LTRe batch of a global batch of `jdr.data.source.Example`s: this host's `query_ids` / `query_mask`
    (from the run's `BatchBuilder`) and `positive_rows [D, B/D, max_positives]` — the index rows of every passage
    key the example's labels call relevant (`Example.relevant`: a labelled source's doc ids). Passages are not
    encoded: the step scores the fixed index."""

    def __init__(self, builder, index: FixedIndex, max_positives: int):
        self.builder, self.index, self.max_positives = builder, index, max_positives

    def __call__(self, examples) -> dict[str, np.ndarray]:
        from jdr.distributed import host_rows

        arrays = self.builder(examples)
        host = examples[host_rows(len(examples), self.builder.process_index, self.builder.process_count)]
        rows = self.index.positive_rows(
            [sorted(ex.relevant) for ex in host], self.max_positives, where="training qrels"
        )
        d, per = arrays["query_ids"].shape[:2]
        return {
            "query_ids": arrays["query_ids"],
            "query_mask": arrays["query_mask"],
            "positive_rows": rows.reshape(d, per, self.max_positives),
        }
