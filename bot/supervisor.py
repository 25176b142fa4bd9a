"""`PROCESSES=N`: N bot processes on one machine, one port, one Redis.

A bot process does its work on one core (Python runs one thread of it), so a machine with more
cores runs more processes. The supervisor starts N copies of the bot (`python app.py`, each
told its place by `BOT_PROCESS_INDEX`). Over HTTP each binds `PORT` with SO_REUSEPORT and the
kernel spreads new connections between them; in Socket Mode each opens a connection of its own
and Slack spreads envelopes between those. Redis makes them one bot, as it does processes on
several machines: a message is taken once, by whichever process Slack reached, and the threads of
a process that dies are taken over by the others.

The first process starts alone and says through a pipe once it serves; the others start then.
A process that fails at start-up (exit status 2: a token, the port, Redis) stops them all, since
that failure would repeat in every copy, and its one line is said once. The supervisor starts a
process again when it dies (a crash or a kill, not a stop it was asked for), passes SIGTERM and
SIGINT on to all of them and exits once they have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Set by the supervisor in each process it starts: that process runs the bot, not a supervisor.
PROCESS_INDEX_ENV = "BOT_PROCESS_INDEX"
READY_FD_ENV = "BOT_READY_FD"
MAX_PROCESSES = 64
# Slack keeps at most 10 Socket Mode connections open for one app, one per process here.
MAX_SOCKET_MODE_CONNECTIONS = 10
STARTUP_FAILED = 2  # app.py's exit status for a setting, port or Redis it cannot start with
# A process that dies within this long of its start is restarted after a longer wait each time.
STEADY_SECONDS = 60.0
RESTART_WAIT_SECONDS = 1.0
RESTART_WAIT_MAX_SECONDS = 30.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
# What `auto` leaves each process: its RSS peaked at 130-146 MB in a burst of 500 (docs/performance.md),
# and the supervisor itself holds about 21 MB.
PROCESS_MEMORY_BYTES = 160 * 2**20
SUPERVISOR_MEMORY_BYTES = 25 * 2**20


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: those it may run on, and no more than a container's CPU
    quota allows (a container limited to 2 CPUs on a 64-core host sees all 64)."""
    if hasattr(os, "sched_getaffinity"):
        cores = max(1, len(os.sched_getaffinity(0)))
    else:
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 `cpu.max`, or v1 CFS quota), None for
    no limit or where there is no such file."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 for no limit
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def usable_memory(cgroup_root: Path = CGROUP_ROOT, meminfo: Path = MEMINFO) -> int | None:
    """Bytes the processes may use together: the machine's memory, and no more than a
    container's limit (cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`); None if unknown."""
    limits = [_meminfo_total(meminfo), _cgroup_memory_limit(cgroup_root)]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _meminfo_total(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_memory_limit(root: Path) -> int | None:
    for name in ("memory.max", "memory/memory.limit_in_bytes"):  # v2 ("max" for none), v1
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        # v1 says "no limit" with a huge number (the largest page-aligned 63-bit value).
        return int(text) if text.isdigit() and int(text) < 2**60 else None
    return None


def process_count(
    value: str, *, socket_mode: bool, cgroup_root: Path = CGROUP_ROOT, meminfo: Path = MEMINFO
) -> int:
    """PROCESSES, already checked (bot/config.py): a whole number, or `auto`: one per core, as
    many as the memory holds (a container limited to 512 MB that sees 8 cores runs 3, not 8)."""
    if value.strip().lower() != "auto":
        return int(value)
    cap = MAX_SOCKET_MODE_CONNECTIONS if socket_mode else MAX_PROCESSES
    memory = usable_memory(cgroup_root, meminfo)
    fit = cap if memory is None else (memory - SUPERVISOR_MEMORY_BYTES) // PROCESS_MEMORY_BYTES
    return max(1, min(usable_cores(cgroup_root), fit, cap))


def wants_several(env: Mapping[str, str]) -> bool:
    """Whether this process is to supervise others: PROCESSES is set to anything but 1 (a
    malformed value too: the check of the settings names it) and nobody started this one."""
    return env.get("PROCESSES", "").strip() not in ("", "1") and process_index(env) is None


def process_index(env: Mapping[str, str]) -> int | None:
    """This process's place among its supervisor's (0, 1, ...), or None when unsupervised."""
    raw = env.get(PROCESS_INDEX_ENV, "")
    return int(raw) if raw.isdigit() else None


class Supervisor:
    def __init__(self, app: Path, count: int, env: Mapping[str, str]) -> None:
        self.app = app
        self.count = count
        self.env = dict(env)
        self._stopping = asyncio.Event()
        self._exit_status = 0

    async def run(self) -> int:
        """Keep `count` bot processes running until SIGTERM or SIGINT; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        """Stop every process (each finishes its answers in flight), then `run` returns."""
        self._stopping.set()

    async def _run(self) -> int:
        # The first alone, until it serves: what stops one copy at start-up (a rejected token, the
        # port, Redis) would stop them all, and its one line should be said once, not N times.
        first = await self._spawn_and_wait_until_serving(0)
        if first.returncode == STARTUP_FAILED:
            return STARTUP_FAILED
        if first.returncode is None and not self._stopping.is_set():
            log.info("bot process 1 (pid %d) serves; starting %d more", first.pid, self.count - 1)
        await asyncio.gather(
            self._keep_running(0, first), *(self._keep_running(index) for index in range(1, self.count))
        )
        log.info("all bot processes stopped")
        return self._exit_status

    async def _spawn(
        self, index: int, extra_env: Mapping[str, str] | None = None, pass_fds: tuple[int, ...] = ()
    ) -> asyncio.subprocess.Process:
        env = self.env | {"PROCESSES": str(self.count), PROCESS_INDEX_ENV: str(index)} | dict(extra_env or {})
        return await asyncio.create_subprocess_exec(sys.executable, str(self.app), env=env, pass_fds=pass_fds)

    async def _spawn_and_wait_until_serving(self, index: int) -> asyncio.subprocess.Process:
        """Start a process that says through a pipe once it serves; wait for that or its exit."""
        read_end, write_end = os.pipe()
        try:
            process = await self._spawn(index, {READY_FD_ENV: str(write_end)}, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        try:
            # One byte once it serves; end of file if it exits first.
            serving = asyncio.to_thread(os.read, read_end, 1)
            if not await self._unless_stopped(serving, process, index, before_serving=True):
                await process.wait()
        finally:
            os.close(read_end)
        return process

    async def _keep_running(self, index: int, process: asyncio.subprocess.Process | None = None) -> None:
        wait = RESTART_WAIT_SECONDS
        while not self._stopping.is_set():
            if process is None:
                process = await self._spawn(index)
            started = asyncio.get_running_loop().time()
            status = await self._unless_stopped(process.wait(), process, index)
            pid, process = process.pid, None
            if self._stopping.is_set():
                return
            if status == 0:
                # Told to stop by someone else (SIGTERM sent to it alone): leave it stopped.
                log.info("bot process %d (pid %d) stopped", index + 1, pid)
                return
            if status == STARTUP_FAILED:
                log.error("bot process %d could not start; stopping the others", index + 1)
                self._exit_status = STARTUP_FAILED
                self._stopping.set()
                return
            if asyncio.get_running_loop().time() - started >= STEADY_SECONDS:
                wait = RESTART_WAIT_SECONDS  # it had run steadily: this is a new crash, not a loop
            log.warning(
                "bot process %d (pid %d) %s; starting it again in %.0f s",
                index + 1, pid, _describe(status), wait,
            )  # fmt: skip
            # Its threads are taken over by the others meanwhile (it stopped beating in Redis).
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass
            wait = min(wait * 2, RESTART_WAIT_MAX_SECONDS)
        if process is not None:
            # Told to stop (passed on to it) before it could be watched here: the first process,
            # stopped as it finished starting. It finishes its answers and exits; wait for that.
            await process.wait()

    async def _unless_stopped(
        self,
        work: Awaitable[T],
        process: asyncio.subprocess.Process,
        index: int,
        *,
        before_serving: bool = False,
    ) -> T:
        """`work`'s result. A stop that comes first is passed on to `process`, bot process
        `index` + 1 (it finishes its answers in flight, SHUTDOWN_GRACE_SECONDS, and exits), and
        `work` is still awaited. Said in the log: which process was told, and whether it did not
        serve yet (it finishes starting first)."""
        working = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((working, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not working.done():
            log.info(
                "passing the stop on to bot process %d (pid %d)%s",
                index + 1, process.pid, ", which does not serve yet" if before_serving else "",
            )  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        return await working


def ready_fd(env: Mapping[str, str]) -> int | None:
    """The pipe this process writes a byte to once it serves, if its supervisor waits for that."""
    raw = env.get(READY_FD_ENV, "")
    return int(raw) if raw.isdigit() else None


def _describe(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def orphaned(parent_pid: int) -> bool:
    """True once the supervisor that started this process is gone (it was killed outright)."""
    return os.getppid() != parent_pid
