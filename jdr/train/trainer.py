"""`jdr train`: build a run from a config — encoder, data, negatives, iterator, compiled step, hooks — and run it.

Everything that can be wrong with the config or the data is checked in `prepare` before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jdr.config import ConfigError, to_dict
from jdr.data.batching import BatchBuilder, PretokenizedTexts, check_layout
from jdr.data.beir import BeirData, load_beir, resolve_dataset
from jdr.data.groups import GroupIterator
from jdr.models import encoder as encoder_lib
from jdr.run_info import write_run_record
from jdr.train import hooks as hooks_lib
from jdr.train.checkpoint import Checkpointer
from jdr.train.grad_cache import check_grad_cache_chunk, make_grad_cache_step
from jdr.train.ltre import check_ltre_config
from jdr.train.loop import MetricsWriter, run_loop, write_json
from jdr.train.optim import make_optimizer
from jdr.train.state import TrainState
from jdr.train.step import check_finite, make_train_step, pmap_train_step, replicate
from jdr.train.workdir import CHECKPOINT_DIR, save_encoder_description

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """Everything `train` needs, built and validated by `prepare` (no compilation has happened yet)."""

    cfg: Any
    workdir: Path
    params: Any
    spec: encoder_lib.EncoderSpec
    tokenizer: Any
    model_dir: Path
    data: BeirData
    train_qids: list[str]
    dev_qids: list[str]
    table: Any
    iterator: GroupIterator
    batches: BatchBuilder


def split_dev(qids, n_dev: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of the training queries into (train, dev); dev is used for periodic evaluation only."""
    qids = sorted(qids)
    if n_dev <= 0:
        return qids, []
    if n_dev >= len(qids):
        raise ConfigError(f"data.dev_queries={n_dev} leaves no training queries out of {len(qids)}")
    perm = np.random.default_rng([seed, 0xDE5]).permutation(len(qids))
    dev = set(qids[i] for i in perm[:n_dev])
    return [q for q in qids if q not in dev], sorted(dev)


def resolve_model(path: str) -> Path:
    """`minilm` → the installed all-MiniLM-L6-v2; a local dir; else a hub name (downloaded when allowed)."""
    from jdr.models.hf import find_minilm, resolve_model_dir

    return find_minilm() if path == "minilm" else resolve_model_dir(path)


def _validate(cfg) -> None:
    """Cross-field checks that a locked ConfigDict cannot express."""
    checks = [
        (cfg.train.steps >= 1, f"train.steps must be >= 1, got {cfg.train.steps}"),
        (cfg.train.loss in ("info_nce", "triplet"), f"train.loss must be info_nce or triplet, got {cfg.train.loss!r}"),
        (cfg.train.temperature > 0, f"train.temperature must be > 0, got {cfg.train.temperature}"),
        (cfg.negatives.num >= 0, f"negatives.num must be >= 0, got {cfg.negatives.num}"),
        (cfg.negatives.refresh_mode in ("sync", "async"), "negatives.refresh_mode must be sync or async"),
        (cfg.negatives.refresh_every >= 0, "negatives.refresh_every must be >= 0"),
        (cfg.train.loss != "triplet" or cfg.negatives.num >= 1, "train.loss=triplet needs negatives.num >= 1"),
        (cfg.model.dtype in ("float32", "bfloat16"), "model.dtype must be float32 or bfloat16"),
        (not cfg.ltre.enabled, "ltre.enabled: jdr train does not run LTRe yet (jdr.train.ltre builds its step)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_layout(cfg.train.global_batch_size, jax.process_count(), jax.local_device_count())
    per_device = cfg.train.global_batch_size // (jax.process_count() * jax.local_device_count())
    try:
        check_grad_cache_chunk(cfg.train.grad_cache_chunk, per_device, 1 + cfg.negatives.num)
        check_hard_in_batch(cfg, per_device)
        check_ltre_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_hard_in_batch(cfg, per_device: int) -> None:
    """EBR keys: k >= 0, weight >= 0, and k no more than the in-batch passages of other queries' groups."""
    k, group = cfg.train.hard_in_batch_k, 1 + cfg.negatives.num
    queries = cfg.train.global_batch_size if cfg.train.cross_device_negatives else per_device
    if k < 0 or cfg.train.hard_in_batch_weight < 0:
        raise ValueError("train.hard_in_batch_k and train.hard_in_batch_weight must be >= 0")
    if k > (queries - 1) * group:
        raise ValueError(f"train.hard_in_batch_k={k} exceeds the {(queries - 1) * group} in-batch passages of "
                         "other queries")


def _negative_counts(cfg) -> dict[str, int]:
    """The target per-source counts, and the warm-start counts used until the first ANN refresh."""
    from jdr.negatives.sources import source_counts

    if cfg.negatives.source == "none" or cfg.negatives.num == 0:
        return {}
    return source_counts(cfg.negatives.source, cfg.negatives.num, cfg.negatives.hybrid)


def warm_start_counts(counts: dict[str, int]) -> dict[str, int]:
    """ANCE warm start: until the first refresh, ANN's share of the negatives comes from BM25."""
    if "ann" not in counts:
        return counts
    out = {k: v for k, v in counts.items() if k != "ann"}
    out["bm25"] = out.get("bm25", 0) + counts["ann"]
    return out


def prepare(cfg, workdir) -> Run:
    """Validate the config, load encoder and data, build the negatives table and the data iterator."""
    from jdr.models.hf import load
    from jdr.negatives.sources import build_table

    _validate(cfg)
    counts = _negative_counts(cfg)
    if "ann" in counts and cfg.negatives.refresh_every == 0:
        raise ConfigError("negatives: source 'ann' needs negatives.refresh_every > 0 (ANCE refresh)")
    workdir = Path(workdir)
    model_dir = resolve_model(cfg.model.path)
    params, spec, tokenizer = load(model_dir, tied=cfg.model.tied, dtype=cfg.model.dtype,
                                   query_max_length=cfg.model.query_max_length,
                                   passage_max_length=cfg.model.passage_max_length)
    data = load_beir(resolve_dataset(cfg.data.dataset), split=cfg.data.train_split)
    train_qids, dev_qids = split_dev(data.qrels, cfg.data.dev_queries, cfg.seed)
    train_qrels = {q: data.qrels[q] for q in train_qids}
    table = None
    if counts:
        table = build_table(warm_start_counts(counts), data.corpus, data.queries, train_qrels, train_qids,
                            depth=cfg.negatives.depth, seed=cfg.seed, skip_top=cfg.negatives.skip_top)
    iterator = GroupIterator(train_qids, train_qrels, table, global_batch_size=cfg.train.global_batch_size,
                             num_negatives=cfg.negatives.num, seed=cfg.seed, process_index=jax.process_index(),
                             process_count=jax.process_count())
    queries = PretokenizedTexts.from_texts(tokenizer, train_qids, [data.queries[q] for q in train_qids],
                                           spec.query_max_length)
    passages = PretokenizedTexts.from_texts(tokenizer, data.corpus.ids, data.corpus.passages(),
                                            spec.passage_max_length)
    batches = BatchBuilder(queries, passages, local_device_count=jax.local_device_count())
    return Run(cfg, workdir, params, spec, tokenizer, model_dir, data, train_qids, dev_qids, table, iterator, batches)


def _encode_fn(spec):
    def encode_fn(params, input_ids, attention_mask, tower, deterministic, rng):
        return encoder_lib.encode(params, spec, input_ids, attention_mask, tower=tower,
                                  deterministic=deterministic, rng=rng)

    return encode_fn


def train(cfg, workdir, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train per `cfg` in `workdir` (resuming from its latest checkpoint) and return the final metrics.

    `stop_at` ends the process after that step as a preemption would (tests of exact resume use it): hooks that
    are due run, the end-of-training work (export, test evaluation) does not.
    """
    run = prepare(cfg, workdir)
    workdir, primary = run.workdir, jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        write_run_record(workdir, to_dict(cfg), cfg.seed, model_dir=str(run.model_dir),
                         dev_queries=run.dev_qids, num_train_queries=len(run.train_qids))
        save_encoder_description(workdir, run.spec, run.model_dir)

    tx, lr_at = make_optimizer(
        lr=cfg.train.lr, total_steps=cfg.train.steps, warmup_steps=cfg.train.warmup_steps,
        schedule=cfg.train.schedule, weight_decay=cfg.train.weight_decay, b1=cfg.train.b1, b2=cfg.train.b2,
        eps=cfg.train.eps, grad_clip_norm=cfg.train.grad_clip_norm, grad_accum_steps=cfg.train.grad_accum_steps)
    state = TrainState.create(run.params, tx)
    rng = jax.random.key(cfg.seed, impl=cfg.train.rng_impl)
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, keep=cfg.checkpoint.keep, keep_best_metric=f"dev/{cfg.eval.metric}",
                        async_save=cfg.checkpoint.async_save)
    start_step = 0
    if ckpt.latest_step() is not None:
        state, extras = ckpt.restore(abstract_state=state)
        start_step = int(state.step) // cfg.train.grad_accum_steps
        rng = extras["rng"]
        if extras.get("negatives") is not None:  # the table first: the iterator state names its version
            from jdr.negatives.table import NegativesTable

            train_qrels = {q: run.data.qrels[q] for q in run.train_qids}
            run.table = NegativesTable.from_arrays(extras["negatives"], run.data.corpus.ids, train_qrels)
            run.iterator.set_table(run.table)
        run.iterator.restore(extras["iterator_state"])
        log.info("resumed from step %d", start_step)

    loss_kwargs = ({"temperature": cfg.train.temperature} if cfg.train.loss == "info_nce"
                   else {"margin": cfg.train.margin})
    if cfg.train.hard_in_batch_k:
        loss_kwargs.update(hard_in_batch_k=cfg.train.hard_in_batch_k,
                           hard_in_batch_weight=cfg.train.hard_in_batch_weight, hard_in_batch_margin=cfg.train.margin)
    build_step = (functools.partial(make_grad_cache_step, chunk=cfg.train.grad_cache_chunk)
                  if cfg.train.grad_cache_chunk else make_train_step)
    step_fn = pmap_train_step(build_step(
        _encode_fn(run.spec), loss_name=cfg.train.loss, tx=tx, lr_at=lr_at,
        cross_device_negatives=cfg.train.cross_device_negatives, dropout=cfg.train.dropout, loss_kwargs=loss_kwargs))
    state = replicate(state)
    writer = MetricsWriter(workdir, tensorboard=cfg.log.tensorboard, enabled=primary)
    hooks = hooks_lib.build_hooks(run, ckpt, writer, rng=rng)
    micro = cfg.train.grad_accum_steps

    def next_batch(step):
        return run.batches(next(run.iterator))

    def step_once(state, batch, step):
        return step_fn(state, batch, rng)

    loop = run_loop(
        state, start_step * micro, cfg.train.steps * micro, next_batch, step_once, hooks.all,
        examples_per_step=cfg.train.global_batch_size, progress=progress and primary,
        on_metrics=lambda step, m: {k: float(np.mean(jax.device_get(v))) for k, v in m.items()},
        check_loss=check_finite, stop_at=None if stop_at is None else stop_at * micro)
    ckpt.wait()
    if loop.step < cfg.train.steps * micro:
        ckpt.close()
        writer.close()
        return {"step": loop.step, "stopped": True}
    final = hooks.finish(loop)
    ckpt.close()
    writer.close()
    if primary:
        write_json(workdir / "final_metrics.json", final)
    return final


