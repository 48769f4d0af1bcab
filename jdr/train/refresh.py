"""The ANCE refresh as a training hook: when to rebuild the negatives table, in which thread, and when every host
swaps it in. The build itself (encode, index, mine: `jdr.negatives.refresh.ann_build_fn`) knows nothing of steps.

`RefreshHook.on_step(step, params)` is polled by the training loop after every step. In "sync" mode a refresh
runs right there (bit-reproducible runs). In "async" mode it runs in a background thread on a host copy of the
params while training continues on the previous table (ANCE's design), and a later `on_step` hands back the
finished table; the loop swaps its reference between steps, so the swap is atomic. One build at a time: a
refresh that falls due while the previous one still runs is SKIPPED (logged, counted in `skipped_steps`), so
training never stalls on a slow build; the running build's table is delivered as usual.

A build still in flight when the run stops is not silently lost (async only: a sync build never outlives its
step). At a preemption the loop gives it a grace period (`wait`); a checkpoint saved while one is in flight
records it (`in_flight`), and the resumed run's hook, told so (`owed`), starts a refresh at its first step instead
of at the next multiple of `every`.

Multi-host: every host builds its own copy, but no host decides alone. Whether a finished async build is swapped
in at a step is process 0's call (its thread's state, broadcast through the coordination service's key-value
store; the others wait for their own build to finish and swap at the same step), so every host trains on the
same table from the same step and skips the same refreshes. A build that fails on any host raises `RefreshError`
on every host (`jdr.distributed.raise_if_any_failed`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from jdr.negatives.table import NegativesTable

log = logging.getLogger(__name__)


class RefreshError(RuntimeError):
    """A negatives refresh failed; raised in the training thread, naming the step the refresh started at."""


@dataclasses.dataclass(frozen=True)
class RefreshRecord:
    """One delivered refresh. `age_steps` = swapped_step - started_step (the staleness ANCE trades for speed);
    `wait_seconds` = time the training loop spent on it (param snapshot + joins; the whole build in sync mode)."""

    version: int
    started_step: int
    swapped_step: int
    age_steps: int
    wait_seconds: float
    build_seconds: float
    timings: Mapping[str, float]
    owed_from: int | None = None  # set on the refresh a resumed run owed: the step of the build the stop lost

    def metrics(self) -> dict[str, float]:
        """Flat floats for the metrics writer (prefix e.g. "negatives")."""
        owed = {} if self.owed_from is None else {"owed_from": self.owed_from}
        return {
            "version": self.version,
            "age_steps": self.age_steps,
            "wait_seconds": self.wait_seconds,
            "build_seconds": self.build_seconds,
            **owed,
            **self.timings,
        }


class _Job:
    """One background build: runs `build_fn(snapshot, step)` and keeps its table or its exception."""

    def __init__(self, build_fn, snapshot, step: int, wait_seconds: float, owed_from: int | None = None):
        self.step, self.wait_seconds, self.owed_from = step, wait_seconds, owed_from
        self.table: NegativesTable | None = None
        self.error: BaseException | None = None
        self.build_seconds = 0.0
        self.thread = threading.Thread(
            target=self._run, args=(build_fn, snapshot), daemon=True, name=f"jdr-negatives-refresh-{step}"
        )
        self.thread.start()

    def _run(self, build_fn, snapshot):
        t0 = time.perf_counter()
        try:
            self.table = build_fn(snapshot, self.step)
        except BaseException as e:  # re-raised in the training thread by RefreshHook
            self.error = e
        self.build_seconds = time.perf_counter() - t0


class RefreshHook:
    """Rebuild the negatives table every `every` steps with `build_fn(params, step) -> NegativesTable`.

    The hook stamps each delivered table with `version` (initial_version + 1, + 2, ...) and `created_step` (the
    step its params come from). Failures and empty tables raise `RefreshError("negatives refresh for step N
    failed: ...")` in the training thread, on the `on_step`/`finish` that collects them: never a silently stale
    table. `history` holds a `RefreshRecord` per delivered table.

    `owed`: the step of a build that was in flight when the checkpoint this run resumes from was saved (`in_flight`
    then); the first `on_step` starts a refresh in its place, whatever the step.
    """

    needs_metrics = False  # polling after every step must not force a device sync

    def __init__(
        self,
        every: int,
        build_fn: Callable[[Any, int], NegativesTable],
        *,
        mode: str = "async",
        initial_version: int = 0,
        owed: int | None = None,
    ):
        if every < 1:
            raise ValueError(f"refresh every must be >= 1, got {every}")
        if mode not in ("async", "sync"):
            raise ValueError(f"refresh mode must be 'async' or 'sync', got {mode!r}")
        self.every, self.build_fn, self.mode = every, build_fn, mode
        self.version = initial_version
        self.history: list[RefreshRecord] = []
        self.skipped_steps: list[int] = []
        self._job: _Job | None = None
        self._last_step = 0
        self._owed = owed

    @property
    def running(self) -> bool:
        """Whether a background build is in flight."""
        return self._job is not None

    @property
    def in_flight(self) -> int | None:
        """The step whose params the in-flight build encodes (what a checkpoint records as owed), or None."""
        return None if self._job is None else self._job.step

    def on_step(self, step: int, params) -> NegativesTable | None:
        """Call after each training step. `params` is the unreplicated params pytree, or a zero-argument function
        returning it (called only at refresh steps, so polling costs nothing). Returns a new table to swap in,
        or None."""
        self._last_step = step
        out = None
        if self._job is not None and self._swap_now(step):
            out = self._collect(step)
        owed, self._owed = self._owed, None
        if owed is not None:
            log.warning(
                "negatives refresh owed: the build from step %d was in flight when the checkpoint was saved; "
                "starting a refresh at step %d",
                owed,
                step,
            )
        if owed is not None or (step > 0 and step % self.every == 0):
            fetch = params if callable(params) else (lambda: params)
            if self.mode == "sync":
                t0 = time.perf_counter()
                table, error = None, None
                try:
                    table = self.build_fn(fetch(), step)
                except Exception as e:
                    error = e
                self._agree(step, table, error)
                elapsed = time.perf_counter() - t0
                out = self._deliver(table, step, step, elapsed, elapsed, owed)
            elif self._job is not None:
                self.skipped_steps.append(step)
                log.warning(
                    "negatives refresh at step %d skipped: the refresh from step %d is still running",
                    step,
                    self._job.step,
                )
            else:
                import jax  # host copy now, before the next step donates the device buffers

                t0 = time.perf_counter()
                snapshot = jax.device_get(fetch())
                self._job = _Job(self.build_fn, snapshot, step, time.perf_counter() - t0, owed)
        return out

    def wait(self, timeout: float) -> NegativesTable | None:
        """Give the in-flight build up to `timeout` seconds (0: none) to finish; its table if it did (swap it in at
        this step, every host: process 0's thread decides, as in `on_step`), else None and it keeps running.
        For a preemption, where the next poll never comes. Raises `RefreshError` if the build failed."""
        if self._job is None:
            return None
        self._job.thread.join(max(timeout, 0.0))  # on every host: the others' copies finish about as soon
        if not self._swap_now(self._last_step, "grace"):
            return None
        return self._collect(self._last_step)

    def finish(self) -> NegativesTable | None:
        """Wait for an in-flight build and return its table (None if none): call before a checkpoint or at the
        end of training for sync semantics (every host, at the same step). Raises `RefreshError` if the build
        failed on any host."""
        if self._job is None:
            return None
        return self._collect(self._last_step)

    def totals(self) -> dict:
        """Summed over the delivered refreshes: the builds' encode / index / mine seconds (in a background thread
        when async), the loop's wait for them, and how many were built and skipped."""
        out = {
            "mode": self.mode,
            "builds": len(self.history),
            "skipped": len(self.skipped_steps),
            "owed": sum(r.owed_from is not None for r in self.history),
            "loop_wait_seconds": round(sum(r.wait_seconds for r in self.history), 3),
            "build_seconds": round(sum(r.build_seconds for r in self.history), 3),
        }
        for key in ("encode_s", "index_s", "mine_s"):
            out[key[:-2] + "_seconds"] = round(sum(r.timings.get(key, 0.0) for r in self.history), 3)
        return out

    def _swap_now(self, step: int, why: str = "poll") -> bool:
        """Whether the in-flight build is collected at `step`: process 0's thread decides for every host."""
        from jdr.distributed import broadcast_from_primary

        done = not self._job.thread.is_alive()
        return (
            broadcast_from_primary(f"negatives_refresh/{self._job.step}/{why}/{step}", "swap" if done else "") == "swap"
        )

    def _agree(self, started: int, table, error: BaseException | None) -> None:
        """Raise `RefreshError` on every host if the build from step `started` failed (or is unusable) on any."""
        from jdr.distributed import raise_if_any_failed

        if error is not None:
            wrapped = RefreshError(f"negatives refresh for step {started} failed: {type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        else:
            error = _invalid(table, started)
        raise_if_any_failed(f"negatives_refresh/{started}/{self.version}", error, RefreshError)

    def _collect(self, step: int) -> NegativesTable:
        job, self._job = self._job, None
        t0 = time.perf_counter()
        job.thread.join()  # done already on process 0; another host may still be finishing its copy
        wait = time.perf_counter() - t0
        self._agree(job.step, job.table, job.error)
        return self._deliver(job.table, job.step, step, job.wait_seconds + wait, job.build_seconds, job.owed_from)

    def _deliver(
        self, table, started: int, swapped: int, wait: float, build_s: float, owed_from: int | None = None
    ) -> NegativesTable:
        self.version += 1
        table = dataclasses.replace(table, version=self.version, created_step=started)
        timings = dict(table.timings or {})
        rec = RefreshRecord(self.version, started, swapped, swapped - started, wait, build_s, timings, owed_from)
        self.history.append(rec)
        log.info(
            "negatives table v%d (%s) from step %d swapped in at step %d: age %d steps, build %.1fs (%s), "
            "loop waited %.2fs",
            rec.version,
            table.source,
            started,
            swapped,
            rec.age_steps,
            build_s,
            ", ".join(f"{k} {v:.1f}s" for k, v in rec.timings.items()),
            wait,
        )
        return table


def _invalid(table, started: int) -> RefreshError | None:
    """Why a build's result cannot be swapped in, or None."""
    if not isinstance(table, NegativesTable):
        return RefreshError(
            f"negatives refresh for step {started} failed: the build returned "
            f"{type(table).__name__}, not a NegativesTable"
        )
    if not table.candidates or not any((c >= 0).any() for c in table.candidates.values()):
        return RefreshError(f"negatives refresh for step {started} failed: the new table has no candidates")
    return None


class RefreshPoll:
    """The loop hook of a `RefreshHook`: polled after every step (no metrics, no device sync: `loop.state` is read
    only when a refresh starts); a delivered table is swapped into the run's labelled source and its record
    logged under "negatives/"."""

    every, needs_metrics, at_end, name = 1, False, False, "refresh"

    def __init__(self, refresh: RefreshHook, run, writer, host_params: Callable[[Any], Any]):
        self.refresh, self.run, self.writer, self.host_params = refresh, run, writer, host_params

    def __call__(self, loop, *, last: bool) -> None:
        if last:  # a table mined now would never be trained on
            return
        table = self.refresh.on_step(loop.step, lambda: self.host_params(loop.state))
        if table is not None:
            swap_table(self.run, table, self.refresh, self.writer, loop.step)


def swap_table(run, table: NegativesTable, refresh: RefreshHook, writer, step: int) -> None:
    """Train on `table` from the next step on, and log the refresh that delivered it."""
    run.training.labeled.set_table(table)
    writer.write(step, refresh.history[-1].metrics(), prefix="negatives")
