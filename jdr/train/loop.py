"""The training loop: run the compiled step, call hooks every N steps. Periodic work lives in hooks, not here.

Steps are optimizer steps. With gradient accumulation one step is `accum` calls of the compiled step (micro-steps,
optax.MultiSteps applies the update on the last); hooks, logs and checkpoints happen only between optimizer steps,
so a checkpoint never holds a partial accumulation and every cadence (`checkpoint.every`, `eval.every`, ...) counts
optimizer steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm


@dataclasses.dataclass
class LoopState:
    """What hooks may read and update between steps.

    `step`: optimizer steps done. `state`: the replicated TrainState — reading it first checks the loss of the step
    that produced it (a device sync), so a hook that never reads it costs the loop nothing and no hook ever sees
    parameters a non-finite loss produced. A hook sets `stop` (e.g. "preempted") to end the loop after this step.
    """

    step: int
    raw_state: Any
    metrics: dict[str, float]
    examples_per_second: float = 0.0
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_step: int | None = None  # the step `eval_metrics` were computed at
    stop: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    pending_check: Callable[[], None] | None = None

    @property
    def state(self) -> Any:
        self.check()
        return self.raw_state

    @state.setter
    def state(self, value: Any) -> None:
        self.raw_state = value

    def check(self) -> None:
        """Run the pending non-finite-loss check (blocks until the step is done), once."""
        check, self.pending_check = self.pending_check, None
        if check is not None:
            check()


class Hook(Protocol):
    """Periodic work. `every` = 0 means the hook runs only at the last step (when `at_end`). Optional attributes:
    `needs_metrics` (default True: the step's metrics are fetched to the host first), `at_end`, `name`."""

    every: int

    def __call__(self, loop: LoopState, *, last: bool) -> None: ...


@dataclasses.dataclass
class FunctionHook:
    """A plain function as a hook: `fn(loop, last=...)` every `every` steps (and at the end if `at_end`)."""

    every: int
    fn: Callable[..., None]
    at_end: bool = True
    name: str = ""
    needs_metrics: bool = True

    def __call__(self, loop: LoopState, *, last: bool) -> None:
        self.fn(loop, last=last)


def due(hook, step: int, last: bool) -> bool:
    """Whether `hook` runs after `step` (1-based count of completed steps)."""
    every = getattr(hook, "every", 0)
    if last and getattr(hook, "at_end", True):
        return True
    return every > 0 and step % every == 0


def run_loop(
    state: Any,
    start_step: int,
    total_steps: int,
    next_batch: Callable[[int], Any],
    step_fn: Callable[[Any, Any, int], tuple[Any, dict]],
    hooks: Iterable,
    *,
    examples_per_step: int,
    accum: int = 1,
    on_metrics: Callable[[int, dict], dict] | None = None,
    check_loss: Callable[[int, Any], None] | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    timer=None,
) -> LoopState:
    """Run optimizer steps `start_step+1 .. total_steps` (or only up to `stop_at`, as a crash would), each
    `accum` micro-steps, then the hooks due at that step; a hook setting `loop.stop` ends the loop early.

    `next_batch(step)` gives the device batch for a micro-step of `step`; `step_fn(state, batch, step)` runs the
    compiled train step and returns (state, device metrics); `on_metrics(step, metrics)` turns device metrics into
    host floats. `loop.metrics` is the mean over the step's `accum` micro-steps (loss, grad_norm, every metric:
    one micro-batch's values are noise the accumulation averages away); `examples_per_step` counts the examples
    of one micro-step (one `step_fn` call), so `loop.examples_per_second` is `accum` x that per optimizer step.
    `check_loss(step, device_loss)` raises on a non-finite loss. It runs for each micro-step right after the next
    one is dispatched (so the host never stalls the device), and before any hook reads
    `loop.state`; a step where no hook reads the state or needs metrics (e.g. only a refresh poll is due) never
    waits for the device. `timer` (a `timing.PhaseTimer`) gets "data", "train_step" and "hook/<name>" phases.
    """
    hooks = list(hooks)
    phase = timer.phase if timer is not None else (lambda name: contextlib.nullcontext())
    loop = LoopState(step=start_step, raw_state=state, metrics={})
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, desc="train", dynamic_ncols=True)
    window_start, window_examples = time.perf_counter(), 0
    pending = None  # (step, device loss) of the last micro-step, awaiting its finiteness check
    end = total_steps if stop_at is None else min(stop_at, total_steps)

    def check_pending() -> None:
        nonlocal pending
        if pending is not None and check_loss is not None:
            with phase("train_step"):  # the wait is the device finishing the step
                check_loss(*pending)
        pending = None

    for step in range(start_step + 1, end + 1):
        micro_metrics = []
        for _ in range(accum):
            with phase("data"):
                batch = next_batch(step)
            with phase("train_step"):
                loop.raw_state, device_metrics = step_fn(loop.raw_state, batch, step)
            micro_metrics.append(device_metrics)
            check_pending()  # the previous micro-step's loss, while this one runs
            pending = (step, device_metrics["loss"])
        loop.step = step
        loop.pending_check = check_pending
        window_examples += examples_per_step * accum
        last = step == total_steps
        due_hooks = [h for h in hooks if due(h, step, last)]
        if on_metrics is not None and (last or any(getattr(h, "needs_metrics", True) for h in due_hooks)):
            loop.check()  # never show or log metrics of a step whose loss is not finite
            with phase("train_step"):
                loop.metrics = mean_metrics([on_metrics(step, m) for m in micro_metrics])
            elapsed = time.perf_counter() - window_start
            loop.examples_per_second = window_examples / max(elapsed, 1e-9)
            window_start, window_examples = time.perf_counter(), 0
            bar.set_postfix(
                loss=f"{loop.metrics.get('loss', np.nan):.4f}",
                lr=f"{loop.metrics.get('lr', np.nan):.2e}",
                ex_s=f"{loop.examples_per_second:.1f}",
            )
        for hook in due_hooks:
            with phase(f"hook/{getattr(hook, 'name', '') or type(hook).__name__}"):
                hook(loop, last=last)
        bar.update(1)
        if loop.stop:
            break
    loop.check()  # the caller gets checked parameters
    bar.close()
    return loop


def mean_metrics(per_micro_step: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the micro-steps of one optimizer step (keys of the last micro-step)."""
    return {k: float(np.mean([m[k] for m in per_micro_step if k in m])) for k in per_micro_step[-1]}
