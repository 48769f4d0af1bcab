"""Distill-VQ on jdr's training loop (`jdr.train.loop.run_loop`): the query order as a pure function of the step,
the checkpoint of a VQ run, and its hooks (history/logging, checkpoint, preemption).

A checkpoint (`jdr.checkpoint.Checkpointer`, orbax, CRC-checked arrays) in `<workdir>/checkpoints` holds the
TrainState (codebooks, centroids, the query tower's params when it trains, Adam's state, the step), the frozen
OPQ rotation and IVF lists the run trained against, and in its JSON `hook_state` the soft-assignment scale and the
per-step history so far. The data position is the step itself: `QueryOrder` replays the seeded order, so a run
resumed at step k draws the batches the uninterrupted run drew after step k and ends bit for bit the same.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdr.checkpoint import Checkpointer
from jdr.config import to_dict
from jdr.models.workdir import CHECKPOINT_DIR
from jdr.train.loop import FunctionHook, LoopState
from jdr.train.preemption import PreemptionHook, PreemptionWatch
from jdr.train.state import TrainState
from jdr.vq.layer import VQIndex

log = logging.getLogger(__name__)


class QueryOrder:
    """The training-query rows of each step's batch: epochs of `n // batch_size` batches, each epoch a fresh
    permutation drawn from one `np.random.default_rng(seed)` stream (the order Distill-VQ has always trained in).

    `rows(step)` (1-based) is a pure function of (seed, step): the current epoch's permutation is cached, and a
    step of an earlier or skipped epoch (a resumed run) replays the stream from the seed up to its epoch."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._rng, self._epoch, self._order = np.random.default_rng(seed), -1, None

    def rows(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step - 1, self.per_epoch)
        if epoch < self._epoch:
            self._rng, self._epoch = np.random.default_rng(self.seed), -1
        while self._epoch < epoch:
            self._order, self._epoch = self._rng.permutation(self.n), self._epoch + 1
        return self._order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def position(self) -> dict:
        """What the order depends on besides the step (checked on resume: another order would not resume exactly)."""
        return {"order": "seeded_epochs", "seed": self.seed, "batch_size": self.batch_size, "queries": self.n}


def checkpoint_tree(state: TrainState, vq: VQIndex) -> dict:
    """What a checkpoint holds: the TrainState and the frozen arrays the run trains against."""
    tree = {"train": state, "lists": vq.lists}
    if vq.rotation is not None:
        tree["rotation"] = vq.rotation
    return tree


@dataclasses.dataclass
class Resumed:
    """Where a run starts: step, TrainState, the frozen arrays (`vq`), the soft-assignment scale, the history."""

    step: int
    state: TrainState
    vq: VQIndex
    tau_scale: float
    history: list[dict]


class VQCheckpoints:
    """The checkpoints of one Distill-VQ run in `<workdir>/checkpoints` (`cfg.checkpoint.every` / `.keep`)."""

    def __init__(self, workdir, cfg, order: QueryOrder):
        self.cfg, self.order = cfg, order
        self.ckpt = Checkpointer(
            Path(workdir) / CHECKPOINT_DIR, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save
        )

    def resume(self, fresh: Resumed) -> Resumed:
        """The latest checkpoint's run (shaped like `fresh`, the step-0 run), or `fresh` when there is none."""
        if self.ckpt.latest_step() is None:
            return fresh
        saved, extras = self.ckpt.restore(abstract_state=checkpoint_tree(fresh.state, fresh.vq))
        was, now = extras["iterator_state"], self.order.position()
        if was != now:
            diff = ", ".join(f"{k} {was.get(k)!r} -> {v!r}" for k, v in now.items() if was.get(k) != v)
            raise ValueError(
                f"{self.ckpt.directory}: this run's query order differs from its checkpoint's ({diff}); "
                "rerun with the same config or use a new workdir"
            )
        hooks = extras["hook_state"]
        vq = dataclasses.replace(fresh.vq, lists=saved["lists"], rotation=saved.get("rotation"))
        state = jax.tree.map(jnp.asarray, saved["train"])  # on device, so the step can donate it
        step = int(state.step)
        log.info("distill-vq: resumed from step %d", step)
        return Resumed(step, state, vq, float(hooks["tau_scale"]), list(hooks["history"])[:step])

    def save(self, step: int, state: TrainState, run: Resumed, history: list[dict]) -> None:
        self.ckpt.save(
            step,
            checkpoint_tree(state, run.vq),
            iterator_state=self.order.position(),
            rng=jax.random.PRNGKey(self.cfg.seed),  # the step draws no randomness; recorded for completeness
            config=to_dict(self.cfg),
            hook_state={"tau_scale": run.tau_scale, "history": history},
        )


def run_hooks(cfg, run: Resumed, history: list[dict], checkpoints: VQCheckpoints | None, watch=None) -> list:
    """The hooks of a Distill-VQ run, in call order: record every step's metrics in `history` (and log the loss
    ten times per run); with `checkpoints`, the preemption check (`watch`, a `PreemptionWatch`) and a checkpoint
    every `cfg.checkpoint.every` steps and at the end."""
    steps, t0 = cfg.train.steps, time.time()
    saved = {"step": None}

    def record(loop: LoopState, last: bool) -> None:
        history.append(dict(loop.metrics))
        if loop.step % max(1, steps // 10) == 0:
            log.info("distill-vq step %d/%d loss %.4f (%.1fs)", loop.step, steps, history[-1]["loss"], time.time() - t0)

    hooks: list = [FunctionHook(1, record, name="log")]
    if checkpoints is None:
        return hooks

    def checkpoint(loop: LoopState, last: bool = False) -> None:
        if saved["step"] != loop.step:  # the preemption hook saved this step already
            checkpoints.save(loop.step, loop.state, run, history)
            saved["step"] = loop.step

    def save_and_wait(loop: LoopState) -> None:
        checkpoint(loop)
        checkpoints.ckpt.wait()

    if watch is not None:
        hooks.append(PreemptionHook(watch, save_and_wait))
    hooks.append(FunctionHook(cfg.checkpoint.every, checkpoint, name="checkpoint"))
    return hooks


def open_watch(checkpoints: VQCheckpoints | None) -> PreemptionWatch | None:
    """A SIGTERM watch while a checkpointed run trains (without checkpoints a SIGTERM ends it the default way)."""
    return None if checkpoints is None else PreemptionWatch()
