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
from jdr.data.batching import BatchBuilder, check_layout
from jdr.data.source import TrainingSource
from jdr.models import encoder as encoder_lib
from jdr.run_info import write_run_record
from jdr.train import hooks as hooks_lib
from jdr.train.checkpoint import Checkpointer
from jdr.train.loop import MetricsWriter, run_loop, write_json
from jdr.train.optim import make_optimizer
from jdr.train.state import TrainState
from jdr.train.data import SOURCE_KINDS, TrainingData, build_training_data, negative_counts
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
    training: TrainingData
    batches: BatchBuilder

    @property
    def source(self) -> TrainingSource:
        """The stream of global batches the loop draws from."""
        return self.training.source


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
        (cfg.data.source in SOURCE_KINDS, f"data.source must be one of {', '.join(SOURCE_KINDS)}, "
                                          f"got {cfg.data.source!r}"),
    ]
    if cfg.moco.enabled:
        checks += [
            (cfg.train.loss == "info_nce", "moco.enabled needs train.loss=info_nce"),
            (cfg.model.tied, "moco.enabled needs model.tied=True (the key tower is a momentum copy of the one tower)"),
            (0.0 <= cfg.moco.momentum < 1.0, f"moco.momentum must be in [0, 1), got {cfg.moco.momentum}"),
            (cfg.moco.queue_size > 0 and cfg.moco.queue_size % cfg.train.global_batch_size == 0,
             f"moco.queue_size {cfg.moco.queue_size} must be a positive multiple of train.global_batch_size"),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_layout(cfg.train.global_batch_size, jax.process_count(), jax.local_device_count())


def prepare(cfg, workdir) -> Run:
    """Validate the config, load the encoder and the training data, build the source and the batch builder."""
    from jdr.models.hf import load
    from jdr.models.tokenize import pad_id

    _validate(cfg)
    counts = negative_counts(cfg)
    if "ann" in counts and cfg.negatives.refresh_every == 0:
        raise ConfigError("negatives: source 'ann' needs negatives.refresh_every > 0 (ANCE refresh)")
    workdir = Path(workdir)
    model_dir = resolve_model(cfg.model.path)
    params, spec, tokenizer = load(model_dir, tied=cfg.model.tied, dtype=cfg.model.dtype,
                                   query_max_length=cfg.model.query_max_length,
                                   passage_max_length=cfg.model.passage_max_length)
    training = build_training_data(cfg, tokenizer, spec)
    batches = BatchBuilder(query_max_length=spec.query_max_length, passage_max_length=spec.passage_max_length,
                           pad_token_id=pad_id(tokenizer), local_device_count=jax.local_device_count(),
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           pad_queries_to_max=cfg.data.pad_queries_to_max,
                           pad_passages_to_max=cfg.data.pad_passages_to_max,
                           false_negatives=cfg.data.mask_false_negatives and cfg.train.loss == "info_nce",
                           cross_device=cfg.train.cross_device_negatives)
    return Run(cfg, workdir, params, spec, tokenizer, model_dir, training, batches)


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
                         dev_queries=sorted(run.training.dev.qrels) if run.training.dev else [],
                         data=run.training.describe())
        save_encoder_description(workdir, run.spec, run.model_dir)

    tx, lr_at = make_optimizer(
        lr=cfg.train.lr, total_steps=cfg.train.steps, warmup_steps=cfg.train.warmup_steps,
        schedule=cfg.train.schedule, weight_decay=cfg.train.weight_decay, b1=cfg.train.b1, b2=cfg.train.b2,
        eps=cfg.train.eps, grad_clip_norm=cfg.train.grad_clip_norm, grad_accum_steps=cfg.train.grad_accum_steps)
    if cfg.moco.enabled:
        from jdr.train.moco import MocoState

        state = MocoState.create(run.params, tx, queue_size=cfg.moco.queue_size,
                                 dim=encoder_lib.embedding_dim(run.params, run.spec), seed=cfg.seed)
    else:
        state = TrainState.create(run.params, tx)
    rng = jax.random.key(cfg.seed, impl=cfg.train.rng_impl)
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, keep=cfg.checkpoint.keep, keep_best_metric=f"dev/{cfg.eval.metric}",
                        async_save=cfg.checkpoint.async_save)
    start_step = 0
    if ckpt.latest_step() is not None:
        state, extras = ckpt.restore(abstract_state=state)
        start_step = int(state.step) // cfg.train.grad_accum_steps
        rng = extras["rng"]
        labeled = run.training.labeled
        if extras.get("negatives") is not None:  # the table first: the source state names its version
            from jdr.negatives.table import NegativesTable

            labeled.set_table(NegativesTable.from_arrays(extras["negatives"], labeled.data.corpus.ids,
                                                         labeled.train_qrels))
        run.source.restore(extras["iterator_state"])
        log.info("resumed from step %d", start_step)

    if cfg.moco.enabled:
        from jdr.train.moco import make_moco_train_step

        make_step = functools.partial(make_moco_train_step, momentum=cfg.moco.momentum)
    else:
        make_step = make_train_step
    step_fn = pmap_train_step(make_step(
        _encode_fn(run.spec), loss_name=cfg.train.loss, tx=tx, lr_at=lr_at,
        cross_device_negatives=cfg.train.cross_device_negatives, dropout=cfg.train.dropout,
        loss_kwargs=({"temperature": cfg.train.temperature} if cfg.train.loss == "info_nce"
                     else {"margin": cfg.train.margin})))
    state = replicate(state)
    writer = MetricsWriter(workdir, tensorboard=cfg.log.tensorboard, enabled=primary)
    hooks = hooks_lib.build_hooks(run, ckpt, writer, rng=rng)
    micro = cfg.train.grad_accum_steps

    def next_batch(step):
        return run.batches(run.source.next_batch())

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


