"""The periodic work of a training run, each a hook called every N steps: log, refresh negatives (ANCE),
evaluate on the dev split, checkpoint — and, once at the end, export and the test evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jdr.config import to_dict
from jdr.data.beir import BeirData, Corpus
from jdr.data.labeled import LabeledData
from jdr.distributed import sync
from jdr.evaluate import TEST_RUN, evaluate_model
from jdr.train.loop import FunctionHook, LoopState
from jdr.train.preemption import PreemptionHook
from jdr.train.refresh import RefreshHook, RefreshPoll, swap_table
from jdr.train.step import unreplicate

log = logging.getLogger(__name__)


def host_params(state) -> Any:
    """Params of device 0 of a replicated TrainState, as host numpy arrays (safe against later donation)."""
    return unreplicate(state.params)


def host_state(state) -> Any:
    """The whole replicated TrainState of device 0 on the host (for checkpoints)."""
    return unreplicate(state)


def dev_split(dev: LabeledData | None, corpus_sample: int, seed: int) -> BeirData | None:
    """The dev queries with their qrels over the full corpus, or — with `corpus_sample` N > 0 — over the dev
    positives plus N seeded random documents (a cheap proxy when encoding the full corpus per eval is too slow)."""
    if dev is None:
        return None
    qrels, queries, corpus = dev.qrels, dev.queries, dev.corpus
    if corpus_sample > 0:
        keep = {corpus.index[d] for rel in qrels.values() for d in rel}
        rest = np.setdiff1d(np.arange(len(corpus)), np.fromiter(keep, int))
        pick = np.random.default_rng([seed, 0xE7A1]).choice(rest, size=min(corpus_sample, len(rest)), replace=False)
        rows = sorted(keep | set(pick.tolist()))
        ids = [corpus.ids[r] for r in rows]
        corpus = Corpus(
            ids, [corpus.titles[r] for r in rows], [corpus.texts[r] for r in rows], {d: i for i, d in enumerate(ids)}
        )
    return BeirData(corpus, queries, qrels)


@dataclasses.dataclass
class Hooks:
    """The run's hooks in call order, what happens once after the last step, and the refresh hook (or None)."""

    all: list
    finish: Callable[[LoopState], dict]
    refresh: Any = None


DEV_TOP_K = 100  # dev evaluation retrieves this deep: metrics cut deeper (recall@1000) would be wrong, not logged


def within_depth(name: str, k: int) -> bool:
    """Whether metric `name` (e.g. "recall@1000", "ndcg@10", "map") can be computed from a top-`k` run."""
    cutoff = re.search(r"@(\d+)$", name)
    return cutoff is None or int(cutoff.group(1)) <= k


def build_hooks(
    run, ckpt, writer, *, rng, preemption=None, timer=None, progress: bool = False, resumed: Mapping | None = None
) -> Hooks:
    """Wire logging, negatives refresh, dev evaluation, checkpointing and the preemption check for `run` (a
    `trainer.Run`). `preemption`: a `jdr.train.preemption.PreemptionWatch`, checked after every step; when it
    fires, every process saves a checkpoint of that step and the loop stops (`loop.stop = "preempted"`).
    `progress`: show a bar while a synchronous refresh encodes (the step bar stands still meanwhile).
    `resumed`: the `hook_state` of the checkpoint the run resumes from (see `checkpoint` below).

    An async refresh in flight when the run stops: at a preemption it gets `negatives.refresh_grace_seconds` to
    finish, and is then swapped in at that step and saved with the checkpoint; a checkpoint saved while one is
    still in flight (a preemption past the grace, or a periodic one) records it as owed (`refresh_owed`: the
    step its params come from), and the resumed run starts a refresh at its first step."""
    cfg, primary = run.cfg, jax.process_index() == 0
    dev = dev_split(run.training.dev, cfg.eval.corpus_sample, cfg.seed)
    labeled = run.training.labeled
    # Training may cut passages shorter than evaluation does (e.g. train at 128, evaluate at 256 tokens).
    eval_length = dict(passage_max_length=cfg.eval.passage_max_length or None)
    eval_kwargs = dict(factory=cfg.eval.factory, batch_size=cfg.eval.batch_size, k=DEV_TOP_K, **eval_length)
    hooks: list = []
    saved = {"step": None}

    def log_metrics(loop: LoopState, last: bool) -> None:
        writer.write(loop.step, {**loop.metrics, "examples_per_second": loop.examples_per_second})

    hooks.append(FunctionHook(cfg.log.every, log_metrics, name="log"))

    refresh = None
    if cfg.negatives.refresh_every > 0 and labeled is not None and labeled.table is not None:
        owed = (resumed or {}).get("refresh_owed")
        refresh = _refresh_hook(run, progress=progress and primary, owed=owed)
        hooks.append(RefreshPoll(refresh, run, writer, host_params))

    def evaluate_dev(loop: LoopState, last: bool) -> None:
        if dev is None:
            return
        t0 = time.perf_counter()
        params = host_params(loop.state)
        scores = evaluate_model(params, run.spec, run.tokenizer, dev, **eval_kwargs)
        loop.eval_metrics = {f"dev/{k}": v for k, v in scores if within_depth(k, DEV_TOP_K)}
        loop.eval_metrics["dev/eval_seconds"] = time.perf_counter() - t0
        loop.eval_step = loop.step
        writer.write(loop.step, {k[4:]: v for k, v in loop.eval_metrics.items()}, prefix="dev")
        log.info("step %d dev %s", loop.step, {k: round(v, 4) for k, v in loop.eval_metrics.items()})

    hooks.append(FunctionHook(cfg.eval.every, evaluate_dev, name="eval"))

    def checkpoint(loop: LoopState, last: bool, *, preempted: bool = False) -> None:
        # Rank a checkpoint only by a dev score of its own step: an older one would pick the wrong best.
        fresh = loop.eval_step == loop.step
        metrics = {k: v for k, v in loop.eval_metrics.items() if k.startswith("dev/")} if fresh else {}
        table = None if labeled is None else labeled.table
        # An async build still running is not in this checkpoint's table: a run resumed from it owes that refresh.
        owed = None if refresh is None else refresh.in_flight
        if owed is not None and not preempted:  # a preemption has said so already
            log.info(
                "checkpoint of step %d: the negatives refresh from step %d is still running; recorded as owed "
                "(a run resumed from this checkpoint starts a refresh at its first step)",
                loop.step,
                owed,
            )
        ckpt.save(
            loop.step,
            host_state(loop.state),
            iterator_state=run.source.state(),
            rng=rng,
            config=to_dict(cfg),
            negatives=None if table is None else table.to_arrays(),
            metrics=metrics or None,
            hook_state=None if owed is None else {"refresh_owed": owed},
        )
        saved["step"] = loop.step

    if preemption is not None:  # before the periodic checkpoint: its save holds the table the grace delivers

        def save_for_preemption(loop: LoopState) -> None:
            if refresh is not None and refresh.running:
                _finish_refresh_for_preemption(refresh, run, writer, loop.step, cfg.negatives)
            checkpoint(loop, last=False, preempted=True)
            ckpt.wait()
            sync("preemption_checkpoint_saved")  # no process exits while another still writes its part

        hooks.append(PreemptionHook(preemption, save_for_preemption))

    def periodic_checkpoint(loop: LoopState, last: bool) -> None:
        if saved["step"] != loop.step:  # the preemption hook saved this step already
            checkpoint(loop, last)

    hooks.append(FunctionHook(cfg.checkpoint.every, periodic_checkpoint, name="checkpoint"))

    def phase(name: str):
        return timer.phase(name) if timer is not None else contextlib.nullcontext()

    def finish(loop: LoopState) -> dict:
        if refresh is not None and refresh.finish() is not None:  # in flight at the end: record, never train on
            writer.write(loop.step, refresh.history[-1].metrics(), prefix="negatives")
        final: dict = {"step": loop.step, **{f"train/{k}": v for k, v in loop.metrics.items()}}
        if refresh is not None:
            final["negatives/refreshes"] = [dataclasses.asdict(r) for r in refresh.history]
            final["negatives/skipped_steps"] = list(refresh.skipped_steps)
        params = host_params(loop.state)
        if primary and cfg.export.at_end:
            with phase("export"):
                run.objective.export(params, run.spec, run.model_dir, run.workdir / "export")
        if cfg.eval.final_test:
            from jdr.data.beir import load_beir, resolve_dataset

            test = load_beir(resolve_dataset(cfg.data.dataset), split=cfg.data.test_split)
            t0 = time.perf_counter()
            with phase("test_eval"):  # the run file is for `jdr compare`
                final.update(
                    {
                        f"test/{k}": v
                        for k, v in evaluate_model(
                            params,
                            run.spec,
                            run.tokenizer,
                            test,
                            factory=cfg.eval.factory,
                            batch_size=cfg.eval.batch_size,
                            k=1000,
                            run_output=run.workdir / TEST_RUN if primary else None,
                            **eval_length,
                        )
                    }
                )
            final["test/eval_seconds"] = time.perf_counter() - t0
            writer.write(loop.step, {k[5:]: v for k, v in final.items() if k.startswith("test/")}, prefix="test")
        return final

    return Hooks(hooks, finish, refresh)


def _finish_refresh_for_preemption(refresh: RefreshHook, run, writer, step: int, cfg) -> None:
    """Give the in-flight async build `cfg.refresh_grace_seconds` to finish: swapped in at `step` if it does (the
    preemption checkpoint then holds its table), else left running (the checkpoint records it as owed)."""
    started = refresh.in_flight
    table = refresh.wait(cfg.refresh_grace_seconds)
    if table is not None:
        swap_table(run, table, refresh, writer, step)
        log.warning(
            "preemption: the negatives refresh from step %d finished within negatives.refresh_grace_seconds=%s; "
            "table v%d swapped in at step %d and saved with the checkpoint",
            started,
            cfg.refresh_grace_seconds,
            table.version,
            step,
        )
    else:
        log.warning(
            "preemption: the negatives refresh from step %d did not finish within negatives.refresh_grace_seconds"
            "=%s; the checkpoint records it as owed and the resumed run starts a refresh at its first step",
            started,
            cfg.refresh_grace_seconds,
        )


def _refresh_hook(run, *, progress: bool = False, owed: int | None = None):
    """The ANCE refresh: encode corpus + training queries with a params snapshot, re-mine the dense sources (`ann`:
    faiss over the corpus; `memory`: the re-encoded corpus with the fixed augmentation memories), new table. The
    texts are encoded from the training source's own token stores (tokenised once, at the start of the run)."""
    from jdr.negatives.refresh import AnnRefreshConfig, ann_build_fn
    from jdr.train.encoders import token_encoders
    from jdr.train.sources import negative_counts

    cfg = run.cfg.negatives
    labeled = run.training.labeled
    # Sync refresh: hosts split the corpus and all-gather. Async: the build runs in a background thread, where a
    # cross-host collective could interleave with the train step's, so each host encodes it all.
    sync = cfg.refresh_mode == "sync"
    encode_corpus, encode_queries = token_encoders(
        labeled, run.spec, batch_size=cfg.refresh_batch_size, sharded=sync, progress=progress and sync
    )
    ce_filter = None
    if cfg.ce_denoise_model:
        from jdr.negatives.ce_denoise import load_filter

        ce_filter = load_filter(
            cfg.ce_denoise_model,
            labeled.data.corpus,
            labeled.data.queries,
            threshold=cfg.ce_denoise_threshold,
            margin=cfg.ce_denoise_margin,
            depth=cfg.ce_denoise_depth,
            batch_size=cfg.refresh_batch_size,
        )
    refresh_cfg = AnnRefreshConfig(
        depth=cfg.depth,
        factory=cfg.refresh_factory,
        refresh_fraction=cfg.refresh_fraction,
        skip_top=cfg.skip_top,
        denoise_threshold=cfg.denoise_threshold,
        seed=run.cfg.seed,
        counts=negative_counts(run.cfg),
        candidate_filter=ce_filter,
    )
    build = ann_build_fn(
        encode_corpus,
        encode_queries,
        labeled.data.corpus,
        labeled.train_qids,
        labeled.train_qrels,
        refresh_cfg,
        initial=labeled.table,
        memory=run.training.memory,
    )
    return RefreshHook(
        cfg.refresh_every, build, mode=cfg.refresh_mode, initial_version=labeled.table.version, owed=owed
    )
