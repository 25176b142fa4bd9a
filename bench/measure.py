"""Numbers: percentiles, a process's CPU time and memory from /proc, the machine and its speed,
event-loop lag."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A fixed pure-Python loop, run at module level (global variables, as a script runs it): its time
# says how fast this machine runs Python, so figures from different machines can be compared.
CALIBRATION_STATEMENT = "s += i * i % 7"
CALIBRATION_STEPS = 500_000
CALIBRATION_REPETITIONS = 5


def percentiles(
    values: list[float], points: tuple[int, ...] = (50, 95, 99), *, missing: int = 0
) -> dict[str, float | None]:
    """Nearest-rank percentiles ({"p50": …}); None for every point when there are no values.
    `missing`: how many of the sample never happened (an answer that never came, an event never
    acknowledged); they rank above every value, as infinity, so that leaving them out cannot
    flatter the figure."""
    ordered = sorted(values) + [math.inf] * missing
    found: dict[str, float | None] = {}
    for point in points:
        if not ordered:
            found[f"p{point}"] = None
            continue
        rank = max(1, math.ceil(point / 100 * len(ordered)))
        found[f"p{point}"] = ordered[rank - 1]
    return found


@dataclass(frozen=True)
class ProcSample:
    """One look at a process: CPU seconds used so far, resident memory now and at its peak."""

    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def proc_sample(pid: int, *, reaped_children: bool = False) -> ProcSample:
    """One process alone. `reaped_children`: with the CPU of the children it has waited for."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its closing parenthesis do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime + stime, and cutime + cstime if asked (the children it has seen exit).
    cpu = sum(int(value) for value in fields[11 : 15 if reaped_children else 13]) / CLOCK_TICKS
    memory = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                memory[name] = int(value.split()[0]) * 1024
    return ProcSample(cpu, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


def tree_sample(pid: int) -> ProcSample:
    """A bot process with its children, summed: a bot run with PROCESSES > 1 is a supervisor
    whose children do the work, and one restarted counts through its parent's reaped CPU. Each
    child's peak counts, though they may not have peaked together. Never for the load generator,
    whose children are the bots and Redis."""
    total = proc_sample(pid, reaped_children=True)
    for child in children(pid):
        try:
            theirs = tree_sample(child)
        except FileNotFoundError:  # it exited meanwhile
            continue
        total = ProcSample(
            total.cpu_seconds + theirs.cpu_seconds,
            total.rss_bytes + theirs.rss_bytes,
            total.peak_rss_bytes + theirs.peak_rss_bytes,
        )
    return total


def children(pid: int) -> list[int]:
    """The processes `pid` started that still run (Linux)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except FileNotFoundError:
        return []


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (all cores, from /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS  # up to steal; guest time is already in user


def listen_overflows() -> int | None:
    """Connections the machine's listening sockets have refused so far because their accept queue
    was full (each such client waits about a second to try again); None where Linux does not say."""
    try:
        with open("/proc/net/netstat") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            found = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(found["ListenOverflows"]) if "ListenOverflows" in found else None
    return None


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model
            )
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as meminfo:
            total_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
            memory_gib = round(total_kib / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass
    redis_version = None
    if binary := shutil.which("redis-server"):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        redis_version = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), None)
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": redis_version,
        "calibration": calibration(),
    }


def calibration(
    steps: int = CALIBRATION_STEPS, repetitions: int = CALIBRATION_REPETITIONS
) -> dict[str, object]:
    """The best of a few timed runs of the calibration loop (0.05–0.1 s each here); the best, as
    other work on the machine only ever makes a run slower."""
    code = compile(f"s = 0\nfor i in range({steps}):\n    {CALIBRATION_STATEMENT}\n", "<calibration>", "exec")
    runs = []
    for _ in range(repetitions):
        started = time.perf_counter()
        exec(code, {})  # a fresh module namespace each time
        runs.append(time.perf_counter() - started)
    best = min(runs)
    return {
        "statement": CALIBRATION_STATEMENT,
        "steps": steps,
        "repetitions": repetitions,
        "best_seconds": best,
        "runs_seconds": runs,
        "ns_per_step": best * 1e9 / steps,
        # Scaled to a 10-million-step loop, as such loops are often quoted; one long run of it is
        # slower than this (it takes every slow moment of the machine, not the best of five).
        "seconds_per_10m_steps": best * 10_000_000 / steps,
    }


class LoopLag:
    """How late this process's event loop wakes a 10 ms timer: a busy load generator shows here."""

    INTERVAL = 0.01

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.lags = []
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> dict[str, float | None]:
        if self._task is not None:
            self._task.cancel()
        # The maximum too: a rare long stall (a collection, say) hides below p99 but delays every
        # answer in flight. It includes the step's own summary, computed once answers are in.
        return percentiles(self.lags) | {"max": max(self.lags, default=None)}

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.INTERVAL)
            self.lags.append(time.monotonic() - before - self.INTERVAL)


class PeakRss:
    """Samples a process's resident memory every 100 ms and keeps the highest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        try:
            self.peak = tree_sample(self.pid).rss_bytes
        except OSError:  # stopped (a soak's restart); sampled from the next 100 ms on
            self.peak = 0
        self._task = asyncio.create_task(self._sample())

    def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
        return self.peak

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            try:
                self.peak = max(self.peak, tree_sample(self.pid).rss_bytes)
            except OSError:
                return
