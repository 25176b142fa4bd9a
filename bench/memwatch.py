"""`app.py` with a memory report on SIGUSR2: what a long-running bot's RSS is made of.

`python -m bench.soak --diagnose` runs the bot through this file instead of `app.py`. Each
SIGUSR2 writes `memwatch.json` in the working directory (the bot's scratch directory):

- pymalloc's own figures (`sys._debugmallocstats`): bytes in live Python objects of up to 512
  bytes, bytes free in its pools, and its arenas;
- glibc's (`mallinfo2`): bytes in use and free in the malloc heap, and bytes in mmap'd blocks
  (larger objects: dict and list tables of thousands of entries, buffers);
- the garbage collector's objects by type, the most numerous first;
- with `PYTHONTRACEMALLOC` set: the source lines that hold the most, and the change in each since
  the first report.

Live objects that keep growing are a leak; free bytes that keep growing under a flat live count
are the allocators' fragmentation. Not for production: a report stops the bot's loop for as long
as it takes (0.1-2 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
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
    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
    return {"objects": sum(counts.values()), "by_type": dict(counts.most_common(top))}


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
    }
    body["report_seconds"] = time.monotonic() - started
    temporary = Path(REPORT + ".tmp")
    temporary.write_text(json.dumps(body, indent=1))
    temporary.replace(REPORT)  # the soak reads a whole report or none


def main() -> int:
    sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGUSR2, report)
    import app  # after the handler, so that a report can be asked for at once

    return app.main()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
