"""Hand the free pages inside glibc's heap back to the system, once a minute.

A bot that has run for hours holds no more live memory than after its first minutes, but its RSS
still creeps up: in the soaks of docs/performance.md, Python's objects and glibc's bytes in use
stayed flat over 180,000-360,000 turns while the free space inside glibc's heap grew, from 2-3
MB to 6-10 MB over HTTP and to 16 MB in Socket Mode. glibc returns memory to the system only from
the top of its heap; `malloc_trim(0)` also returns every whole free page inside it (madvise). At
the end of the Socket Mode soak it gave back 12.9 MB of 140.9; trimming once a minute, an hour of
the same load stayed at 111-118 MB, and two hours over HTTP at 112-119 MB, each trim taking
under 2 ms. Elsewhere than glibc
(musl, macOS) there is no malloc_trim and this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

TRIM_INTERVAL_SECONDS = 60.0


@dataclass
class TrimTally:
    """What this process's trims have cost: the seam for a metrics endpoint, and what
    `bench.memwatch` reports in a soak."""

    trims: int = 0
    seconds: float = 0.0
    longest_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.trims += 1
        self.seconds += seconds
        self.longest_seconds = max(self.longest_seconds, seconds)


tally = TrimTally()


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # a C library without it: not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def can_trim() -> bool:
    return _malloc_trim is not None


def trim_heap() -> bool:
    """Give the heap's free pages back now; True when glibc gave any back."""
    if _malloc_trim is None:
        return False
    started = time.perf_counter()
    gave_back = bool(_malloc_trim(0))
    tally.add(time.perf_counter() - started)
    return gave_back


async def trim_heap_forever(interval: float = TRIM_INTERVAL_SECONDS) -> None:
    if _malloc_trim is None:
        log.debug("no malloc_trim in this C library: the heap is left to the allocator")
        return
    while True:
        await asyncio.sleep(interval)
        trim_heap()  # under 1 ms on the loop; from a thread it would wait on the heap's lock anyway
