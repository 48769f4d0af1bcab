"""Preemption: a SIGTERM (a TPU VM's preemption notice, SLURM's `--signal`, a spot GPU's shutdown, `docker stop`)
ends training cleanly. Every process reaches the same step, saves a checkpoint of it, and `jdr train` exits with
`EXIT_RESTART`, which the launch scripts in tpu_scripts/ read as "run me again"; the rerun (same command, same
workdir) resumes from that checkpoint exactly.

Several processes: JAX's preemption sync manager (started by `jax.distributed.initialize`, SIGTERM being its
notice) agrees on the step through the coordination service, so
`multihost_utils.reached_preemption_sync_point(step)` turns True at the same step on every process however many
of them got the signal. One process has no coordination service: the watch installs its own SIGTERM handler and
answers True at the next step.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

EXIT_RESTART = 75  # sysexits.h EX_TEMPFAIL ("temporary failure; try again"): the launch scripts rerun on it


def restart_notice(step: int) -> str:
    """The line a preempted command prints (to stderr) before exiting with `EXIT_RESTART`."""
    return (
        f"jdr: preempted: checkpoint of step {step} saved; rerun the same command to resume (exit code {EXIT_RESTART})"
    )


class PreemptionWatch:
    """Ask `reached(step)` after every training step, on every process; `close()` when the loop ends.

    Installs a SIGTERM handler (one process, main thread) for its lifetime only, so a SIGTERM before training
    starts or after it ends still stops the process the default way."""

    def __init__(self):
        import jax

        self._multi = jax.process_count() > 1
        self._signalled = False
        self._previous = None
        if self._multi:
            from jax._src import distributed

            if distributed.global_state.preemption_sync_manager is None:
                log.warning(
                    "JAX's preemption service is off (jax_enable_preemption_service): a SIGTERM will end "
                    "this run without a checkpoint"
                )
                self._multi = None
        elif threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self._signalled = True

    def reached(self, step: int) -> bool:
        """Whether every process must save `step` and stop now."""
        if self._multi:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        """Restore the SIGTERM handler that was there before."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class PreemptionHook:
    """The training-loop hook of a `PreemptionWatch`: after every step, once every process has reached the notice,
    `save(loop)` a checkpoint of this step (returning when it is on disk) and end the loop (`loop.stop =
    "preempted"`). Not at the last step: the run's own end-of-training save covers that one."""

    every, needs_metrics, at_end, name = 1, False, False, "preemption"

    def __init__(self, watch: PreemptionWatch, save):
        self.watch, self.save = watch, save

    def __call__(self, loop, *, last: bool) -> None:
        if last or not self.watch.reached(loop.step):  # every process asks at every step, in step
            return
        log.warning("preemption notice: saving a checkpoint of step %d and stopping", loop.step)
        self.save(loop)
        loop.stop = "preempted"
