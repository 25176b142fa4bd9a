"""`app.py` with a memory report on SIGUSR2: what a long-running bot's RSS is made of.

`python -m bench.soak --diagnose` runs the bot through this file instead of `app.py`. Each
SIGUSR2 writes `memwatch.json` in the working directory (the bot's scratch directory):

- pymalloc's own figures (`sys._debugmallocstats`): bytes in live Python objects of up to 512
  bytes, bytes free in its pools, and its arenas;
- glibc's (`mallinfo2`): bytes in use and free in the malloc heap, and bytes in mmap'd blocks
  (larger objects: dict and list tables of thousands of entries, buffers);
- the garbage collector's objects by type, the most numerous first;
- what the bot's own heap trims (bot/heap.py) have cost so far: how many, their time in all,
  the longest;
- with `PYTHONTRACEMALLOC` set: the source lines that hold the most, and the change in each since
  the first report.

Live objects that keep growing are a leak; free bytes that keep growing under a flat live count
are the allocators' fragmentation. Not for production: a report stops the bot's loop for as long
as it takes (0.1-2 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import inspect
import json
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPORT = "memwatch.json"
TRIM_REQUEST = "memwatch.trim"  # present: the report also trims glibc's heap, and says what it gave back
_PYMALLOC_LINES = {
    "arenas": re.compile(r"^# arenas allocated current\s*=\s*([\d,]+)"),
    "live_bytes": re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)"),
    "free_bytes": re.compile(r"^# bytes in available blocks\s*=\s*([\d,]+)"),
    "unused_pool_bytes": re.compile(r"^\d+ unused pools \* \d+ bytes\s*=\s*([\d,]+)"),
}
_first_snapshot: tracemalloc.Snapshot | None = None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


def glibc_malloc() -> dict[str, float]:
    """glibc's heap: in use, free inside it, and mmap'd blocks (MB); empty off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return {}
    info = libc.mallinfo2()
    return {
        "heap_mb": info.arena / 2**20,
        "in_use_mb": info.uordblks / 2**20,
        "free_mb": info.fordblks / 2**20,
        "mmap_mb": info.hblkhd / 2**20,
    }


def trim() -> dict[str, float]:
    """glibc's malloc_trim(0): free pages inside the heap go back to the system. The RSS it gives
    back is what fragmentation held, not what the bot uses."""
    before = _rss_mb()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return {}
    return {"rss_before_mb": before, "rss_after_mb": _rss_mb()}


def bot_trims() -> dict[str, float]:
    """What the bot's own trims (bot/heap.py, once a minute) have cost it so far."""
    from bot import heap

    return dataclasses.asdict(heap.tally)


def _rss_mb() -> float:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def pymalloc() -> dict[str, float]:
    """pymalloc's arenas, and the bytes live and free in them (MB)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name, pattern in _PYMALLOC_LINES.items():
            if match := pattern.match(line.strip()):
                value = int(match[1].replace(",", ""))
                found[name] = value if name == "arenas" else value / 2**20
    return found


def gc_types(top: int = 25) -> dict[str, Any]:
    """The collector's objects by type (those made since start-up: the bot freezes what start-up
    made), and for the closure cells among them what they hold and whose they are."""
    objects = gc.get_objects()
    counts = Counter(type(o).__qualname__ for o in objects)
    cells = [o for o in objects if type(o).__qualname__ == "cell"]
    closures = {id(f.__closure__): f for f in objects if inspect.isfunction(f) and f.__closure__}
    holders = Counter(
        _describe(closures.get(id(r), r))
        for r in (gc.get_referrers(*cells) if cells else [])
        if r is not objects
    )
    held = Counter(type(c.cell_contents).__qualname__ for c in cells if _full(c))
    return {
        "objects": sum(counts.values()),
        "by_type": dict(counts.most_common(top)),
        "cells_hold": dict(held.most_common(10)),
        "cells_held_by": dict(holders.most_common(10)),
    }


def _full(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _describe(holder: Any) -> str:
    """A cell's holder: a function or coroutine by its qualified name, else by its type."""
    if inspect.isfunction(holder):
        return f"function {holder.__qualname__}"
    if inspect.iscoroutine(holder):
        return f"coroutine {holder.cr_code.co_qualname}"
    return type(holder).__qualname__


def traced(top: int = 25) -> dict[str, Any]:
    global _first_snapshot
    if not tracemalloc.is_tracing():
        return {}
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        ]
    )
    first = _first_snapshot = _first_snapshot or snapshot
    current, _peak = tracemalloc.get_traced_memory()
    return {
        "traced_mb": current / 2**20,
        "largest": [str(stat) for stat in snapshot.statistics("lineno")[:top]],
        "grown_since_first": [str(stat) for stat in snapshot.compare_to(first, "lineno")[:top]],
    }


def report(_signum: int = 0, _frame: FrameType | None = None) -> None:
    started = time.monotonic()
    body = {
        "at": time.time(),
        "gc_counts": gc.get_count(),
        "gc_stats": gc.get_stats(),
        "pymalloc": pymalloc(),
        "glibc": glibc_malloc(),
        "gc_types": gc_types(),
        "tracemalloc": traced(),
        "bot_trims": bot_trims(),
    }
    if Path(TRIM_REQUEST).exists():
        Path(TRIM_REQUEST).unlink()
        body["trimmed"] = trim()
    body["report_seconds"] = time.monotonic() - started
    temporary = Path(REPORT + ".tmp")
    # No indent: the indenting encoder is Python closures whose cycles would wait in the bot's
    # garbage, next to what the report counts.
    temporary.write_text(json.dumps(body))
    temporary.replace(REPORT)  # the soak reads a whole report or none


def main() -> int:
    sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGUSR2, report)
    import app  # after the handler, so that a report can be asked for at once

    return app.main([])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
