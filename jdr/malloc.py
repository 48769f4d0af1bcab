"""JDR_MALLOC=heap: keep XLA:CPU's large temporary buffers in glibc's heap instead of fresh mmaps.

XLA:CPU allocates each executable's temporaries (attention scores, activations: tens to hundreds of MiB) with
malloc and frees them when the executable returns. glibc serves blocks that large with mmap and returns them with
munmap, so every layer of every batch touches fresh pages: an encode of 256 SciFact passages spent ~19 % of its CPU
time in the kernel (10 M minor page faults). Serving everything from one heap that is never trimmed (what
GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:... does) made that encode 1.18x faster
(benchmarks/results/malloc_ab.md).

Not the default, because a training run fragments that heap: an ANCE-experiment `jdr train` under these settings
grew to 24 GiB resident and was killed by the OOM killer, where it peaks near 9 GiB with glibc's defaults. Use it
for encode / search / evaluate jobs; for everything, LD_PRELOAD a tcmalloc (as fast or faster in the same A/B,
and it returns memory) — jdr stands aside when another allocator is preloaded.

The default allocator of the `jdr` command is mimalloc, a maintained allocator shipped as a PyPI wheel
(`cmeel-mimalloc`, a jdr dependency; or JDR_MIMALLOC=/path/to/libmimalloc.so): the command re-executes itself once
with LD_PRELOAD set to it (an allocator must be preloaded before the process starts). It keeps freed pages for the
next batch without the heap mode's fragmentation: on the idle 2-core AMD EPYC a MiniLM train step ran 1.22x and a
float32 encode batch 1.39x faster than under glibc, with 98-99 % fewer page faults
(`benchmarks/results/malloc_{train_step,encode}_f32.md`), and a whole ANCE training run peaks at the same
resident memory (docs/RESULTS.md, Speed II). JDR_MALLOC picks another: `glibc` (the system allocator), `heap`
(glibc with the settings above), `mimalloc` (required: an error when it cannot be found). Without the wheel the
default falls back to glibc silently; jdr stands aside when any other allocator is already in LD_PRELOAD. Only
the console entry (`jdr`, `python -m jdr.cli`) re-executes: `jdr.cli.main()` called from Python never does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
_SETTINGS = (
    (M_ARENA_MAX, 1),  # threads share the main arena: a per-thread arena serves big blocks with mmap anyway
    (M_MMAP_MAX, 0),  # never mmap a block: grow the heap (brk) instead
    (M_TRIM_THRESHOLD, 2**31 - 1),  # ... and never give its top back (the next batch needs the same memory)
    (M_TOP_PAD, 256 << 20),  # grow it in 256 MiB steps
)
_done = False


def tune_malloc() -> bool:
    """With JDR_MALLOC=heap, apply the settings above to this process's glibc malloc, once. Returns True if they
    are in effect; False (and changes nothing) otherwise: not asked, another allocator preloaded, or no glibc."""
    global _done
    if _done:
        return True
    if os.environ.get("JDR_MALLOC", "").lower() != "heap" or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has both
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _done


def find_mimalloc() -> str | None:
    """Path of libmimalloc.so: $JDR_MIMALLOC, else the cmeel-mimalloc wheel's (`<site-packages>/cmeel.prefix/lib`)."""
    if os.environ.get("JDR_MIMALLOC"):
        return os.environ["JDR_MIMALLOC"] if os.path.exists(os.environ["JDR_MIMALLOC"]) else None
    for entry in sys.path:
        hits = sorted(glob.glob(os.path.join(entry or ".", "cmeel.prefix", "lib", "libmimalloc.so*")), key=len)
        if hits:
            return hits[0]
    return None


MODES = ("mimalloc", "glibc", "heap")


def malloc_mode() -> str:
    """JDR_MALLOC, lower-cased; unset or empty is "auto" (mimalloc when found, else glibc). One line if unknown."""
    mode = os.environ.get("JDR_MALLOC", "").strip().lower() or "auto"
    if mode not in ("auto", *MODES):
        raise SystemExit(f"jdr: error: JDR_MALLOC={mode!r}: must be one of {', '.join(MODES)} (or unset: mimalloc)")
    return mode


def preload_mimalloc(argv: list[str]) -> None:
    """Unless JDR_MALLOC says otherwise or an allocator is already preloaded: replace this process by `python -m
    jdr.cli argv` with LD_PRELOAD=libmimalloc.so (returns only when there is nothing to do). JDR_MALLOC=mimalloc
    without the library is one SystemExit line; the default without it keeps glibc."""
    mode = malloc_mode()
    if mode not in ("auto", "mimalloc") or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return
    lib = find_mimalloc()
    if lib is None:
        if mode == "auto":
            return
        raise SystemExit(
            "jdr: error: JDR_MALLOC=mimalloc but no libmimalloc.so found: `pip install cmeel-mimalloc` "
            "or set JDR_MIMALLOC=/path/to/libmimalloc.so"
        )
    env = dict(os.environ, LD_PRELOAD=" ".join(filter(None, (lib, os.environ.get("LD_PRELOAD")))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "jdr.cli", *argv], env)
