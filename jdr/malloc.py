"""Keep XLA:CPU's large temporary buffers in the heap instead of fresh page-faulting mmaps.

XLA:CPU allocates each executable's temporaries (attention scores, activations: tens to hundreds of MiB) with
malloc and frees them when the executable returns. glibc serves blocks that large with mmap and returns them with
munmap, so every layer of every batch touches fresh pages: on the 2-core CPU an encode spent ~18 % of its CPU
time in the kernel (10 M minor page faults for 512 passages) and ran at 14.2 docs/s. Tuning glibc to serve
everything from one heap that it never trims (the same settings as GLIBC_TUNABLES=glibc.malloc.arena_max=1:
glibc.malloc.mmap_max=0:...) removed 98 % of the kernel time: 19.8 docs/s, same run (benchmarks/results/
malloc_ab.md). The price is that freed memory stays with the process (peak RSS of that encode 1.29 -> 1.72 GiB).

`jdr`'s command line and the test suite call `tune_malloc()` first thing; `JDR_MALLOC=system` leaves glibc's
defaults (e.g. when an LD_PRELOADed tcmalloc / jemalloc already solves this: both were as fast or faster).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

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
    """Apply the settings above to this process's glibc malloc, once. Returns True if they are in effect; False
    (and changes nothing) with JDR_MALLOC=system, another allocator preloaded, or no glibc (macOS, musl)."""
    global _done
    if _done:
        return True
    if os.environ.get("JDR_MALLOC", "").lower() == "system" or "malloc" in os.environ.get("LD_PRELOAD", ""):
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
