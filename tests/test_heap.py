"""bot.heap: free pages inside glibc's heap go back to the system (a long-running bot's RSS)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bot import heap

ROOT = Path(__file__).resolve().parent.parent

# Fills glibc's heap with 1.5-KB chunks (above pymalloc's 512 bytes), keeps one in eight and frees
# the rest: the holes stay resident, under chunks still in use, until something trims them.
FRAGMENT_AND_TRIM = """
import json, pathlib
from bot import heap
def rss_mb():
    return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
kept, freed = [], []
for i in range(40_000):
    (kept if i % 8 == 0 else freed).append(bytearray(1500))
del freed
before = rss_mb()
gave_back = heap.trim_heap()
print(json.dumps({
    "before": before, "after": rss_mb(), "gave_back": gave_back, "kept": len(kept),
    "trims": heap.tally.trims, "trim_seconds": heap.tally.seconds,
}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_gives_the_holes_in_the_heap_back() -> None:
    run = subprocess.run(
        [sys.executable, "-c", FRAGMENT_AND_TRIM], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert heap.can_trim()
    assert result["gave_back"] is True
    # About 51 MB freed in holes (35,000 chunks of 1.5 KB) under 7.5 MB still in use.
    assert result["before"] - result["after"] > 30, result
    # The trim is counted and timed, for a soak's report (and a metrics endpoint to come).
    assert result["trims"] == 1 and result["trim_seconds"] > 0, result
