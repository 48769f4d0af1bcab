"""`jdr train`: build a run from a config — encoder, data, negatives, iterator, compiled step, hooks — and run it.

Everything that can be wrong with the config or the data is checked in `prepare` before anything is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jdr.checkpoint import Checkpointer
from jdr.config import ConfigError, to_dict
from jdr.data.batching import BatchBuilder, check_layout
from jdr.data.source import TrainingSource
from jdr.io import as_path
from jdr.models import encoder as encoder_lib
from jdr.models.workdir import CHECKPOINT_DIR
from jdr.run_info import write_run_record
from jdr.train import hooks as hooks_lib
from jdr.train.grad_cache import check_grad_cache_chunk, chunked_encoder
from jdr.train.loop import run_loop
from jdr.train.metrics_writer import MetricsWriter, write_json
from jdr.train.objectives import Objective, objective_class, objective_for
from jdr.train.optim import make_optimizer
from jdr.train.sources import SOURCE_KINDS, TrainingData, build_training_data, negative_counts
from jdr.train.step import bind_dropout, check_finite, make_train_step, pmap_train_step, replicate

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
    objective: Objective

    @property
    def source(self) -> TrainingSource:
        """The stream of global batches the loop draws from."""
        return self.training.source


def _validate(cfg) -> None:
    """Cross-field checks that a locked ConfigDict cannot express; the objective's own (`Objective.validate`)."""
    checks = [
        (cfg.train.steps >= 1, f"train.steps must be >= 1, got {cfg.train.steps}"),
        (cfg.train.temperature > 0, f"train.temperature must be > 0, got {cfg.train.temperature}"),
        (cfg.negatives.num >= 0, f"negatives.num must be >= 0, got {cfg.negatives.num}"),
        (cfg.negatives.refresh_mode in ("sync", "async"), "negatives.refresh_mode must be sync or async"),
        (cfg.negatives.refresh_every >= 0, "negatives.refresh_every must be >= 0"),
        (cfg.negatives.refresh_grace_seconds >= 0, "negatives.refresh_grace_seconds must be >= 0"),
        (cfg.model.dtype in ("float32", "bfloat16"), "model.dtype must be float32 or bfloat16"),
        (
            cfg.data.source in SOURCE_KINDS,
            f"data.source must be one of {', '.join(SOURCE_KINDS)}, got {cfg.data.source!r}",
        ),
        (
            not cfg.train.matryoshka_dims or cfg.train.objective == "matryoshka",
            "train.matryoshka_dims is read by train.objective=matryoshka only; set that too",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_layout(cfg.train.global_batch_size, jax.process_count(), jax.local_device_count())
    per_device = cfg.train.global_batch_size // (jax.process_count() * jax.local_device_count())
    try:
        check_grad_cache_chunk(cfg.train.grad_cache_chunk, per_device, 1 + cfg.negatives.num)
        objective_class(cfg).validate(cfg, per_device)
        from jdr.negatives.ce_denoise import check_config

        check_config(cfg.negatives)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def prepare(cfg, workdir) -> Run:
    """Validate the config, load the encoder and the training data, build the source and the batch builder."""
    from jdr.models.tokenize import pad_id

    _validate(cfg)
    objective = objective_for(cfg)
    counts = negative_counts(cfg)
    if "ann" in counts and cfg.negatives.refresh_every == 0:
        raise ConfigError("negatives: source 'ann' needs negatives.refresh_every > 0 (ANCE refresh)")
    workdir = as_path(workdir)
    params, spec, tokenizer, model_dir = objective.load_model(cfg)  # the dual encoder unless the objective says
    try:
        objective.check_encoder(params, spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    training = build_training_data(cfg, tokenizer, spec, params)  # params: `memory` negatives are mined with them
    batches = BatchBuilder(
        query_max_length=spec.query_max_length,
        passage_max_length=spec.passage_max_length,
        pad_token_id=pad_id(tokenizer),
        local_device_count=jax.local_device_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        pad_queries_to_max=cfg.data.pad_queries_to_max,
        pad_passages_to_max=cfg.data.pad_passages_to_max,
        false_negatives=cfg.data.mask_false_negatives and objective.masks_false_negatives(),
        cross_device=cfg.train.cross_device_negatives,
    )
    return Run(cfg, workdir, params, spec, tokenizer, model_dir, training, batches, objective)


def _encode_fn(spec):
    def encode_fn(params, input_ids, attention_mask, tower, deterministic, rng):
        return encoder_lib.encode(
            params, spec, input_ids, attention_mask, tower=tower, deterministic=deterministic, rng=rng
        )

    return encode_fn


# A temperature below this is sized for cosine scores in [-1, 1] (sentence-transformers 0.05, Contriever 0.05);
# DPR / Tevatron train raw dot products at 1.0.
COSINE_SIZED_TEMPERATURE = 0.5


def check_temperature(cfg, spec) -> str | None:
    """The warning for an unnormalised dot product trained at a cosine-sized temperature (the softmax saturates:
    BERT CLS dot products run to the hundreds), or None."""
    if (
        cfg.train.loss != "info_nce"
        or getattr(spec, "normalize", True)  # a cross-encoder has no embeddings
        or cfg.train.temperature >= COSINE_SIZED_TEMPERATURE
    ):
        return None
    return (
        f"train.temperature={cfg.train.temperature} is sized for cosine scores, but the encoder scores with an "
        f"unnormalised dot product ({spec.pooling} pooling, model.normalize=False): the softmax saturates. Set "
        f"model.normalize=True, or train.temperature=1.0 as DPR/Tevatron do for dot products"
    )


def _make_step(cfg, run, tx, lr_at):
    """The pmapped train step: the one step over the run's objective, its encoder wrapped by GradCache when
    `train.grad_cache_chunk` is set."""
    encode_fn = _encode_fn(run.spec)
    if cfg.train.grad_cache_chunk:
        encode_fn = chunked_encoder(encode_fn, cfg.train.grad_cache_chunk)
    step = pmap_train_step(make_train_step(encode_fn, run.objective, tx=tx, lr_at=lr_at, dropout=cfg.train.dropout))
    return run.objective.wrap_pmapped(step, bind_dropout(encode_fn, cfg.train.dropout), axis_name="batch")


def train(cfg, workdir, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train per `cfg` in `workdir` (local or gs://; resuming from its latest checkpoint) and return the final
    metrics. Writes `timing.json` (where the time went, peak host memory) at the end, on preemption and on failure.

    A preemption notice (SIGTERM) saves a checkpoint of the step every process reached and returns
    `{"step", "stopped": True, "preempted": True}` (`jdr train` then exits with `preemption.EXIT_RESTART`).
    `stop_at` ends the run after that step as a crash would, without the preemption checkpoint (tests of exact
    resume use it): hooks that are due run, the end-of-training work (export, test evaluation) does not.
    """
    from jdr.models.hf import with_settings
    from jdr.train.preemption import PreemptionWatch
    from jdr.train.timing import PhaseTimer

    workdir = as_path(workdir)  # an unsupported URI is one line, before any work
    timer = PhaseTimer().watch_compiles()
    try:
        with timer.phase("setup"):
            run = prepare(cfg, workdir)
            run.workdir, primary = workdir, jax.process_index() == 0
            run.spec = with_settings(run.spec, pooling=cfg.model.pooling, normalize=cfg.model.normalize)
            warning = check_temperature(cfg, run.spec)
            if warning:
                log.warning(warning)
            if primary:
                workdir.mkdir(parents=True, exist_ok=True)
                write_run_record(
                    workdir,
                    to_dict(cfg),
                    cfg.seed,
                    model_dir=str(run.model_dir),
                    dev_queries=sorted(run.training.dev.qrels) if run.training.dev else [],
                    data=run.training.describe(),
                )
                run.objective.save_description(workdir, run.spec, run.model_dir)

            tx, lr_at = make_optimizer(
                lr=cfg.train.lr,
                total_steps=cfg.train.steps,
                warmup_steps=cfg.train.warmup_steps,
                schedule=cfg.train.schedule,
                weight_decay=cfg.train.weight_decay,
                b1=cfg.train.b1,
                b2=cfg.train.b2,
                eps=cfg.train.eps,
                grad_clip_norm=cfg.train.grad_clip_norm,
                grad_accum_steps=cfg.train.grad_accum_steps,
            )
            tx = run.objective.optimizer(tx)  # e.g. LTRe: only the query tower trains
            state = run.objective.init_state(run.params, tx, spec=run.spec, seed=cfg.seed)
            rng = jax.random.key(cfg.seed, impl=cfg.train.rng_impl)
            micro = cfg.train.grad_accum_steps
            # Ask orbax to rank checkpoints only when the run has dev scores to rank them by.
            ckpt = Checkpointer(
                workdir / CHECKPOINT_DIR,
                keep=cfg.checkpoint.keep,
                async_save=cfg.checkpoint.async_save,
                keep_best_metric=f"dev/{cfg.eval.metric}" if run.training.dev else None,
            )
    except BaseException:
        timer.close()
        raise
    writer = hooks = loop = None
    result: dict = {}
    try:
        with timer.phase("setup"):
            start_step, hook_state = 0, {}
            if ckpt.latest_step() is not None:
                with timer.phase("restore"):
                    state, extras = ckpt.restore(abstract_state=state)
                if int(state.step) % micro:  # checkpoints are taken between optimizer steps only
                    raise ValueError(
                        f"{ckpt.directory}: checkpoint at micro-step {int(state.step)} is not a whole "
                        f"number of train.grad_accum_steps={micro}"
                    )
                start_step = int(state.step) // micro
                rng, hook_state = extras["rng"], extras["hook_state"]
                labeled = run.training.labeled
                if extras.get("negatives") is not None:  # the table first: the source state names its version
                    from jdr.negatives.table import NegativesTable

                    labeled.set_table(
                        NegativesTable.from_arrays(
                            extras["negatives"], labeled.data.corpus.ids, labeled.train_qrels, labeled.memory_ids
                        )
                    )
                run.source.restore(extras["iterator_state"])
                log.info("resumed from step %d", start_step)

            run.objective.attach(run, progress=progress and primary)
            step_fn = _make_step(cfg, run, tx, lr_at)
            state = replicate(state)
            writer = MetricsWriter(workdir, tensorboard=cfg.log.tensorboard, enabled=primary, resume_step=start_step)
            watch = PreemptionWatch()
            hooks = hooks_lib.build_hooks(
                run, ckpt, writer, rng=rng, preemption=watch, timer=timer, progress=progress, resumed=hook_state
            )

        def next_batch(step):
            return run.batches(run.source.next_batch())

        def step_once(state, batch, step):
            return step_fn(state, batch, rng)

        try:
            loop = run_loop(
                state,
                start_step,
                cfg.train.steps,
                next_batch,
                step_once,
                hooks.all,
                accum=micro,
                examples_per_step=cfg.train.global_batch_size,
                progress=progress and primary,
                timer=timer,
                on_metrics=lambda step, m: {k: float(np.mean(jax.device_get(v))) for k, v in m.items()},
                check_loss=check_finite,
                stop_at=stop_at,
            )
        finally:
            watch.close()
        with timer.phase("checkpoint_wait"):
            ckpt.wait()
        if loop.step < cfg.train.steps:
            result = {"step": loop.step, "stopped": True, "preempted": loop.stop == "preempted"}
        else:
            result = hooks.finish(loop)
    except BaseException:
        with contextlib.suppress(Exception):  # the save in flight still lands; its own error must not hide this
            ckpt.close()
        raise
    else:
        ckpt.close()
    finally:
        if writer is not None:
            writer.close()
        refresh = None if hooks is None or hooks.refresh is None else hooks.refresh.totals()
        timing = timer.summary(
            steps=None if loop is None else loop.step,
            refresh=refresh,
            stopped=loop is None or loop.step < cfg.train.steps,
            preempted=loop is not None and loop.stop == "preempted",
        )
        timer.close()
        if primary:
            write_json(workdir / "timing.json", timing)
    result["peak_host_memory_mib"] = timing["peak_host_memory_mib"]
    if primary and not result.get("stopped"):
        write_json(workdir / "final_metrics.json", result)
    return result
