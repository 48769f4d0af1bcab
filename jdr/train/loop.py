"""The training loop: run the compiled step, call hooks every N steps. Periodic work lives in hooks, not here."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
from tqdm.auto import tqdm

from jdr.io import atomic_write


@dataclasses.dataclass
class LoopState:
    """What hooks may read and update between steps. `state` is the replicated TrainState."""

    step: int
    state: Any
    metrics: dict[str, float]
    examples_per_second: float = 0.0
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Hook(Protocol):
    """Periodic work. `every` = 0 means the hook runs only at the last step (when `at_end`)."""

    every: int

    def __call__(self, loop: LoopState, *, last: bool) -> None: ...


@dataclasses.dataclass
class FunctionHook:
    """A plain function as a hook: `fn(loop, last=...)` every `every` steps (and at the end if `at_end`)."""

    every: int
    fn: Callable[..., None]
    at_end: bool = True
    name: str = ""

    def __call__(self, loop: LoopState, *, last: bool) -> None:
        self.fn(loop, last=last)


def due(hook, step: int, last: bool) -> bool:
    """Whether `hook` runs after `step` (1-based count of completed steps)."""
    every = getattr(hook, "every", 0)
    if last and getattr(hook, "at_end", True):
        return True
    return every > 0 and step % every == 0


class MetricsWriter:
    """Appends metrics as JSON lines (one per logged step) and, optionally, TensorBoard scalars."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def run_loop(
    state: Any,
    start_step: int,
    total_steps: int,
    next_batch: Callable[[int], Any],
    step_fn: Callable[[Any, Any, int], tuple[Any, dict]],
    hooks: Iterable,
    *,
    examples_per_step: int,
    on_metrics: Callable[[int, dict], dict] | None = None,
    check_loss: Callable[[int, Any], None] | None = None,
    stop_at: int | None = None,
    progress: bool = True,
) -> LoopState:
    """Run steps `start_step+1 .. total_steps` (or only up to `stop_at`, as a preemption would).

    `next_batch(step)` gives the device batch for the step; `step_fn(state, batch, step)` runs the compiled
    train step and returns (state, device metrics); `on_metrics(step, metrics)` turns device metrics into host
    floats. `check_loss(step, device_loss)` raises on a non-finite loss; it is called for step t right after step
    t+1 is dispatched, so the host never stalls the device yet no hook (checkpoint, export) ever runs on
    parameters a non-finite loss produced. Hooks run after the step, in order; a hook with `needs_metrics =
    False` (e.g. a refresh poll every step) does not force a device sync.
    """
    hooks = list(hooks)
    loop = LoopState(step=start_step, state=state, metrics={})
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, desc="train", dynamic_ncols=True)
    window_start, window_examples = time.perf_counter(), 0
    pending = None  # (step, device loss) awaiting its finiteness check
    end = total_steps if stop_at is None else min(stop_at, total_steps)
    for step in range(start_step + 1, end + 1):
        batch = next_batch(step)
        loop.state, device_metrics = step_fn(loop.state, batch, step)
        loop.step = step
        window_examples += examples_per_step
        last = step == total_steps
        due_hooks = [h for h in hooks if due(h, step, last)]
        if check_loss is not None:
            if pending is not None:
                check_loss(*pending)
            pending = (step, device_metrics["loss"])
            if due_hooks or last:  # hooks see only parameters whose loss was checked
                check_loss(*pending)
                pending = None
        if on_metrics is not None and (last or any(getattr(h, "needs_metrics", True) for h in due_hooks)):
            loop.metrics = on_metrics(step, device_metrics)  # blocks on the device: only when someone reads it
            elapsed = time.perf_counter() - window_start
            loop.examples_per_second = window_examples / max(elapsed, 1e-9)
            window_start, window_examples = time.perf_counter(), 0
            bar.set_postfix(
                loss=f"{loop.metrics.get('loss', np.nan):.4f}",
                lr=f"{loop.metrics.get('lr', np.nan):.2e}",
                ex_s=f"{loop.examples_per_second:.1f}",
            )
        for hook in due_hooks:
            hook(loop, last=last)
        bar.update(1)
    bar.close()
    return loop


def write_json(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
