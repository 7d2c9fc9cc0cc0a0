"""glibc malloc thresholds for the ``advrobust`` command: tensor temporaries reused instead of re-faulted.

glibc serves a block above its mmap threshold (128 KiB at start, raised as such blocks are freed, up to
32 MiB) with a fresh ``mmap`` and gives the top of its heap back to the kernel once more than the trim
threshold (128 KiB) is free there. An attack step frees its activations and gradients and allocates the
same sizes again at the next step, so on glibc's defaults each step's temporaries come back as fresh
zero-filled pages that fault in again, page by page; on a virtual machine a fault costs microseconds. With
both thresholds raised, freed blocks stay in the heap and the next step reuses them: the ``standard`` suite on
the demo's Fast-AT model (400 images, 2 threads) took 72-98 s against 82-102 s in three alternating pairs,
each pair faster tuned (``benchmarks/RESULTS.md``). The cost is freed memory that the process keeps: up to
``trim_threshold`` at the top of each malloc arena's heap, besides what glibc never returns anyway (the demo's peak RSS was 546-569 MB tuned, 555-560 MB not).

Only the command (``advrobust``, ``python -m advrobust``) sets them, at start; importing the library changes
nothing, so a program that uses advrobust keeps whatever allocator it chose. The command leaves them alone
where the user has chosen already: any ``MALLOC_*`` variable or malloc tunables in ``GLIBC_TUNABLES`` set, a
preloaded allocator (jemalloc, tcmalloc, mimalloc), ``ADVROBUST_MALLOC=default``, or a C library other than
glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

#: glibc's ``mallopt`` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 << 20
"""Blocks below this come from the heap (glibc's default: 128 KiB, adjusted up to 32 MiB)."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the heap's top kept before it is given back (glibc's default: 128 KiB)."""

OPT_OUT = "ADVROBUST_MALLOC"
"""``ADVROBUST_MALLOC=default`` keeps glibc's defaults in the command."""

FALLBACK_MMAP_THRESHOLD = 32 << 20
"""The largest mmap threshold glibc documents for 64-bit systems; tried where it refuses ``MMAP_THRESHOLD``."""

_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")


def user_chose_allocator(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` already says how malloc should behave (then the command leaves it alone).

    Any ``MALLOC_*`` variable (glibc's ``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ...), malloc tunables
    in ``GLIBC_TUNABLES``, a preloaded allocator, or ``ADVROBUST_MALLOC=default``.
    """
    if environ.get(OPT_OUT, "").strip().lower() == "default":
        return True
    if any(name.startswith("MALLOC_") for name in environ):
        return True
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return True
    preload = environ.get("LD_PRELOAD", "").lower()
    return any(name in preload for name in _OTHER_ALLOCATORS)


def tune_malloc(
    *,
    mmap_threshold: int = MMAP_THRESHOLD,
    trim_threshold: int = TRIM_THRESHOLD,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if both were set.

    Where glibc refuses an mmap threshold above 32 MiB (its documented 64-bit maximum) it gets 32 MiB.

    A no-op (False) off Linux, without glibc, or where the user chose already (``user_chose_allocator``).
    """
    if user_chose_allocator(os.environ if environ is None else environ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has mallopt but ignores these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    if not mmap_set and mmap_threshold > FALLBACK_MMAP_THRESHOLD:
        mmap_set = bool(mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD))
    trim_set = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return mmap_set and trim_set
