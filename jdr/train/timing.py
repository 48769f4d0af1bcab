"""Where a run's time and memory go: `PhaseTimer` splits the wall clock into exclusive phases (a phase entered inside
another pauses the outer one, so the phases sum to the wall time), counts the time JAX spends compiling, and reads
the process's peak host memory. The trainer writes its `summary()` to `<workdir>/timing.json`."""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

# JAX's own duration events: XLA compiling an executable, and tracing + lowering before it (a trace event can
# hold nested traces of inner jitted functions, so those seconds may overlap each other).
XLA_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")


def peak_host_memory_mib() -> float:
    """The peak resident memory of this process so far (getrusage's ru_maxrss), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class PhaseTimer:
    """Exclusive wall-clock seconds per named phase, plus JAX compile time.

    `with timer.phase("eval"): ...` charges the time inside to "eval", except time spent in a nested phase, which
    goes to that one; time outside any phase goes to "other". Phases are entered from the training thread only.
    Compile seconds (all threads, from `jax.monitoring` events) are inside the phases: compiling the first train
    step is also part of "train_step". Call `close()` to stop listening to JAX.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.compile_seconds, self.compiles, self.trace_seconds = 0.0, 0, 0.0
        self._stack = ["other"]
        self._start = self._mark = time.perf_counter()
        self._lock = threading.Lock()
        self._listener = None

    def watch_compiles(self) -> PhaseTimer:
        """Start adding JAX's XLA compile events to `compile_seconds` (tracing + lowering to `trace_seconds`)."""
        import jax

        def on_event(event: str, duration: float, **_: Any) -> None:
            with self._lock:
                if event == XLA_COMPILE_EVENT:
                    self.compile_seconds += duration
                    self.compiles += 1
                elif event in TRACE_EVENTS:
                    self.trace_seconds += duration

        self._listener = on_event
        jax.monitoring.register_event_duration_secs_listener(on_event)
        return self

    def close(self) -> None:
        """Stop listening to JAX's compile events."""
        if self._listener is not None:
            import jax

            jax.monitoring.unregister_event_duration_listener(self._listener)
            self._listener = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the time inside (minus nested phases) to `name`."""
        self._switch()
        self._stack.append(name)
        self.counts[name] += 1
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def _switch(self) -> None:
        now = time.perf_counter()
        self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    def summary(self, **extra: Any) -> dict:
        """JSON-able: wall seconds, per-phase seconds and counts (largest first), compile time, peak host memory,
        and `extra` (e.g. the refresh's background encode / index / mine seconds)."""
        self._switch()
        phases = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return {
            "wall_seconds": round(time.perf_counter() - self._start, 3),
            "phases": {k: {"seconds": round(v, 3), "count": self.counts.get(k, 0)} for k, v in phases},
            "compile": {
                "xla_seconds": round(self.compile_seconds, 3),
                "executables": self.compiles,
                "trace_and_lower_seconds": round(self.trace_seconds, 3),
                "note": "inside the phases (the first train step's time includes its compile)",
            },
            "peak_host_memory_mib": round(peak_host_memory_mib(), 1),
            **extra,
        }
