"""Distill-VQ training: learn IVF centroids and PQ codebooks (and optionally a query tower) by distilling the dense
teacher's ranking into the quantised index's ADC scores. No relevance labels are needed.

For each training query the candidates are the teacher's top-k documents (exact Flat search over the fixed
document embeddings) plus, with `in_batch`, every other query's candidates in the (global) batch. Teacher score =
q·d; student score = (Rq)·recon(d) with recon = centroid + straight-through PQ reconstruction (`layer.quantize`);
with IVF a second term distils the coarse score (Rq)·centroid[list(d)], weighted by `ivf_weight`.
Duplicate documents across queries' lists stay duplicated on both sides, so the teacher and student distributions
stay comparable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jdr.index.faiss_index import build_index, search
from jdr.losses import DISTILLATION
from jdr.train.loop import run_loop
from jdr.train.state import TrainState
from jdr.train.step import check_finite
from jdr.vq.init import init_from_faiss
from jdr.vq.layer import VQIndex, VQSpec, doc_centroids, quantize, residuals, rotate
from jdr.vq.query_tower import QueryTower, vq_optimizer

__all__ = [
    "Distilled",
    "make_vq_train_step",
    "teacher_candidates",
    "train_distill_vq",
    "teacher_recall",
    "spec_from_config",
    "residual_scale",
]

log = logging.getLogger(__name__)

QueryFn = Callable[[dict, dict], jax.Array]  # (query-tower params, batch) -> student query embeddings [B, d]


def spec_from_config(cfg, d: int) -> VQSpec:
    """The VQSpec of `cfg.vq` for d-dimensional embeddings (one-line ValueError on a bad shape)."""
    return VQSpec(d=d, M=cfg.vq.M, K=cfg.vq.K, nlist=cfg.vq.nlist, opq=cfg.vq.opq)


def _loss_call(name: str, temperature: float) -> Callable:
    if name not in DISTILLATION:
        raise ValueError(f"train.loss: {name!r} is not one of {', '.join(DISTILLATION)}")
    fn = DISTILLATION[name]
    return (lambda s, t: fn(s, t, temperature=temperature)) if name in ("listnet", "kl_distill") else fn


def make_vq_train_step(
    cfg,
    tx: optax.GradientTransformation,
    *,
    tau_scale: float,
    axis_name: str | None = None,
    gather_candidates: bool = True,
    query_fn: QueryFn | None = None,
) -> Callable:
    """Build `step(state, batch, frozen) -> (state, metrics)` for ONE device.

    The soft-assignment temperature is `cfg.train.tau * tau_scale`, with `tau_scale` = `residual_scale(...)`
    (the mean squared sub-space residual norm at init), so `cfg.train.tau` does not depend on the embeddings' scale.

    `state.params`: {"codebooks" [M,K,s], "centroids" [nlist,d] (IVF only), "query" (query tower, with query_fn)}.
    `frozen`: {"rotation": [d,d]} or {} (not trained; broadcast, `in_axes=None` under pmap).
    `batch` (this device): `query_emb` [B,d] teacher query embeddings, `doc_emb` [B,k,d] the fixed embeddings of
    each query's teacher top-k, `lists` [B,k] int32 their IVF lists; with `cfg.train.sup_weight` also `pos_mask`
    [B,k] bool (candidate is a qrels positive); with `query_fn` also whatever it reads (e.g. token arrays).
    The student query is `query_fn(params["query"], batch)` when given, else the teacher's `query_emb`.
    With `axis_name` (pmap / shard_map) grads and metrics are pmean'ed; with `gather_candidates` the candidates
    are all-gathered so every query sees the global batch's documents (the gradient is then that of the mean
    loss over the global batch, as in `jdr.losses.info_nce`).
    """
    t = cfg.train
    dist_loss = _loss_call(t.loss, t.loss_temperature)
    gather_axis = axis_name if gather_candidates else None
    tau = float(t.tau * tau_scale)

    def loss_fn(params, batch, frozen):
        rot = frozen.get("rotation")
        q_t = batch["query_emb"]
        b, k, d = batch["doc_emb"].shape
        docs, lists = batch["doc_emb"].reshape(b * k, d), batch["lists"].reshape(b * k)
        offset = 0
        if gather_axis is not None and t.in_batch:
            docs = lax.all_gather(docs, gather_axis, tiled=True)
            lists = lax.all_gather(lists, gather_axis, tiled=True)
            offset = lax.axis_index(gather_axis) * b * k
        n_cand = docs.shape[0] if t.in_batch else k
        # Column order per query: its own top-k first (margin_mse's anchor is column 0), then the rest.
        cols = (offset + jnp.arange(b)[:, None] * k + jnp.arange(n_cand)[None, :]) % docs.shape[0]
        teacher = jnp.take_along_axis(q_t @ docs.T, cols, axis=1)
        q_s = q_t if query_fn is None else query_fn(params["query"], batch)
        q_rot = rotate(q_s, rot)
        recon, _ = quantize(params, rotate(docs, rot), lists, tau)
        student = jnp.take_along_axis(q_rot @ recon.T, cols, axis=1)
        loss, aux = dist_loss(student, teacher)
        metrics = {"pq_loss": loss, **aux}
        cents = doc_centroids(params, lists)
        if cents is not None and t.ivf_weight:
            ivf_loss, _ = dist_loss(jnp.take_along_axis(q_rot @ cents.T, cols, axis=1), teacher)
            metrics["ivf_loss"] = ivf_loss
            loss = loss + t.ivf_weight * ivf_loss
        if t.sup_weight:
            pos = batch["pos_mask"]
            logp = jax.nn.log_softmax(student / t.loss_temperature, axis=1)[:, :k]
            has_pos = jnp.any(pos, axis=1)
            # Rows without a positive get a finite dummy (all columns) so their masked-out NLL has finite gradients.
            pos = pos | ~has_pos[:, None]
            nll = -jax.nn.logsumexp(jnp.where(pos, logp, -jnp.inf), axis=1)
            sup = jnp.sum(jnp.where(has_pos, nll, 0.0)) / jnp.maximum(jnp.sum(has_pos), 1)
            metrics["sup_loss"] = sup
            loss = loss + t.sup_weight * sup
        metrics["loss"] = loss
        return loss, metrics

    def step(state: TrainState, batch: dict, frozen: dict):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, frozen)
        if axis_name is not None:
            grads = lax.pmean(grads, axis_name)
            metrics = lax.pmean(metrics, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def residual_scale(vq: VQIndex, doc_emb: np.ndarray) -> float:
    """Mean squared norm of a document's sub-space residual (rotated doc - its centroid, per PQ sub-space): the
    natural unit of the PQ distances that the soft assignment divides by tau. doc_emb [N, d]."""
    r = residuals(vq.params, rotate(np.asarray(doc_emb, np.float32), vq.rotation), vq.lists)
    return float(np.mean(np.sum(np.square(r), axis=-1))) / vq.spec.M


def teacher_candidates(doc_emb: np.ndarray, query_emb: np.ndarray, k: int) -> np.ndarray:
    """Rows [Nq, k] of each query's exact dense top-k (faiss Flat, inner product) over doc_emb [N, d]."""
    _, rows = search(build_index(doc_emb, "Flat"), query_emb, k)
    return rows


def teacher_recall(pred_rows: np.ndarray, teacher_rows: np.ndarray, k: int) -> float:
    """Mean fraction of each query's teacher top-k ([Nq, >=k]) found in its predicted top-k ([Nq, >=k])."""
    hits = [len(set(p[:k].tolist()) & set(t[:k].tolist())) for p, t in zip(pred_rows, teacher_rows)]
    return float(np.mean(hits)) / k


class Distilled(NamedTuple):
    """What `train_distill_vq` returns: the trained index, per-step metrics (floats), the trained query tower
    (None unless one was given), and why training stopped before `train.steps` ("preempted", "stop_at"; None when
    it ran to the end)."""

    vq: VQIndex
    history: list[dict]
    query_tower: QueryTower | None
    stopped: str | None = None


def train_distill_vq(
    doc_emb: np.ndarray,
    query_emb: np.ndarray,
    cfg,
    *,
    init: VQIndex | None = None,
    positives: list[list[int]] | None = None,
    query_tower: QueryTower | None = None,
    query_texts: Sequence[str] | None = None,
    workdir=None,
    stop_at: int | None = None,
) -> Distilled:
    """Distill-VQ on precomputed embeddings: index only, or index + query tower.

    doc_emb [N, d] and query_emb [Nq, d] float32: the teacher's embeddings (training queries; no labels needed).
    Starts from `init` or from faiss (`init_from_faiss`, the shape of `cfg.vq`) and runs `cfg.train.steps` Adam
    steps on one device. `positives` (doc rows per query) feed the optional supervised term (`cfg.train.sup_weight`).
    With `query_tower` (and `query_texts`, one per row of query_emb) the tower is trained as well, at
    `cfg.train.encoder_lr`: the student scores its own embedding of the text, the teacher keeps query_emb.

    The steps run on `jdr.train.loop.run_loop` (see `jdr.vq.resume`). With `workdir` the run checkpoints to
    `<workdir>/checkpoints` every `cfg.checkpoint.every` steps and at the end, resumes from the latest checkpoint
    there, and a SIGTERM saves the step reached and returns with `stopped="preempted"`. `stop_at` ends the run after
    that step as a crash would (tests of exact resume).
    """
    from jdr.vq.resume import QueryOrder, Resumed, VQCheckpoints, open_watch, run_hooks

    doc_emb = np.ascontiguousarray(doc_emb, np.float32)
    query_emb = np.ascontiguousarray(query_emb, np.float32)
    if query_emb.ndim != 2 or query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(f"query_emb shape {query_emb.shape} does not match doc_emb dimension {doc_emb.shape[1]}")
    t = cfg.train
    if t.batch_size > len(query_emb):
        raise ValueError(f"train.batch_size={t.batch_size} > {len(query_emb)} training queries")
    if t.sup_weight and positives is None:
        raise ValueError("train.sup_weight > 0 needs `positives` (qrels doc rows per query)")
    if query_tower is not None and (query_texts is None or len(query_texts) != len(query_emb)):
        raise ValueError(
            f"a query tower needs one text per training query ({len(query_emb)}), got "
            f"{None if query_texts is None else len(query_texts)}"
        )
    vq = (
        init
        if init is not None
        else init_from_faiss(
            doc_emb, spec_from_config(cfg, doc_emb.shape[1]), train_sample=cfg.vq.train_sample or None, seed=cfg.seed
        )[0]
    )
    cand = teacher_candidates(doc_emb, query_emb, t.topk)
    params = jax.tree.map(jnp.array, vq.params)  # a copy: the step donates it
    tokens, query_fn = {}, None
    if query_tower is not None:
        tokens, query_fn = query_tower.tokens(query_texts), query_tower.embed_fn()
        params["query"] = jax.tree.map(jnp.array, query_tower.params)
    tx = vq_optimizer(t.lr, t.encoder_lr if query_tower is not None else None)
    order = QueryOrder(len(query_emb), t.batch_size, cfg.seed)
    run = Resumed(0, TrainState.create(params, tx), vq, residual_scale(vq, doc_emb), [])
    checkpoints = None if workdir is None else VQCheckpoints(workdir, cfg, order)
    try:
        if checkpoints is not None:
            run = checkpoints.resume(run)
        step = jax.jit(make_vq_train_step(cfg, tx, tau_scale=run.tau_scale, query_fn=query_fn), donate_argnums=0)
        frozen = {} if run.vq.rotation is None else {"rotation": jnp.asarray(run.vq.rotation)}
        lists = run.vq.lists

        def next_batch(i: int) -> dict:
            qs = order.rows(i)
            rows = cand[qs]
            batch = {
                "query_emb": query_emb[qs],
                "doc_emb": doc_emb[rows],
                "lists": lists[rows],
                **{k: v[qs] for k, v in tokens.items()},
            }
            if t.sup_weight:
                batch["pos_mask"] = np.array([np.isin(r, positives[q]) for q, r in zip(qs, rows)])
            return batch

        history = run.history
        watch = open_watch(checkpoints)
        try:
            loop = run_loop(
                run.state,
                run.step,
                t.steps,
                next_batch,
                lambda state, batch, i: step(state, batch, frozen),
                run_hooks(cfg, run, history, checkpoints, watch),
                examples_per_step=t.batch_size,
                on_metrics=lambda i, m: {k: float(v) for k, v in m.items()},
                check_loss=check_finite,
                stop_at=stop_at,
                progress=False,
            )
        finally:
            if watch is not None:
                watch.close()
    except BaseException:
        if checkpoints is not None:
            with contextlib.suppress(Exception):  # the save in flight still lands; its own error must not hide this
                checkpoints.ckpt.close()
        raise
    if checkpoints is not None:
        checkpoints.ckpt.close()
    trained = jax.tree.map(np.asarray, loop.state.params)
    tower = None
    if query_tower is not None:
        tower = dataclasses.replace(query_tower, params=trained.pop("query"))
    stopped = loop.stop or ("stop_at" if loop.step < t.steps else None)
    vq = VQIndex(spec=vq.spec, params=trained, rotation=run.vq.rotation, lists=run.vq.lists)
    return Distilled(vq, history, tower, stopped)
