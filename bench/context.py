"""What every scenario shares: the settings of this run, the bench's own Redis, a scratch folder,
and the measurement of one load step (CPU of the bot, the load generator and Redis; peak memory)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.bots import BotProcess
from bench.measure import LoopLag, PeakRss, listen_overflows, machine_busy_seconds, proc_sample
from bench.profile import Profiler
from bench.rig import ModelShape

# Past these, the load generator may be what limits the figures rather than the bot.
LOADGEN_BUSY_CPU = 0.85  # of one core
LOADGEN_BUSY_LAG = 0.05  # seconds of p99 event-loop lag
# Past this, other processes on the machine (not the bench's) took CPU the bot may have needed.
OTHER_LOAD_BUSY = 0.25  # of one core
QUIET_WAIT_BUDGET = 120.0  # seconds a whole run may spend waiting for other work to stop
QUIET_WAIT_STEP = 30.0  # seconds one step may wait


@dataclass(frozen=True)
class Settings:
    quick: bool
    sweep: tuple[int, ...]
    sweep_modes: tuple[str, ...]
    model: ModelShape
    step_timeout: float  # seconds past the ideal that a load step may take before it is cut off
    tiers: bool  # also run the sweep with Slack's rate-limit tiers on (when the emulator has them)
    throughput_model: ModelShape
    throughput_seconds: float
    throughput_probe_seconds: float
    throughput_rates: tuple[float, float]  # first rate tried, highest rate tried
    throughput_done_p99: float
    replicas: int
    replica_threads: tuple[int, ...]
    replica_messages: int  # per thread
    replica_gap: float  # seconds between one thread's messages
    redelivery: float  # share of events delivered again to another process
    crash_threads: int  # a last load during which one process is killed; 0: none
    baseline_sweep: tuple[int, ...]
    baseline_cap: float  # seconds a baseline step may take; bigger steps are skipped

    @classmethod
    def full(cls) -> Settings:
        return cls(
            quick=False,
            sweep=(1, 50, 200, 500),
            sweep_modes=("http", "socket"),
            model=ModelShape(first_token_seconds=0.5, stream_seconds=2.0, answer_chars=400, chunk_chars=16),
            step_timeout=60.0,
            tiers=True,
            throughput_model=ModelShape(0.0, 0.0, answer_chars=200, chunk_chars=50),
            throughput_seconds=30.0,
            # Long enough for a backlog to show: 5 s probes held at rates that 30 s runs did not.
            throughput_probe_seconds=10.0,
            throughput_rates=(50.0, 800.0),
            throughput_done_p99=1.0,
            replicas=3,
            replica_threads=(50, 200, 500),
            replica_messages=3,
            replica_gap=0.3,
            redelivery=0.2,
            crash_threads=200,
            baseline_sweep=(1, 50, 200),
            baseline_cap=60.0,
        )

    @classmethod
    def smoke(cls) -> Settings:
        """A few seconds, small C: proves the harness works, measures nothing worth quoting."""
        return cls(
            quick=True,
            sweep=(1, 5),
            sweep_modes=("http",),
            model=ModelShape(first_token_seconds=0.1, stream_seconds=0.2, answer_chars=120, chunk_chars=16),
            step_timeout=10.0,
            tiers=True,
            throughput_model=ModelShape(0.0, 0.0, answer_chars=120, chunk_chars=40),
            throughput_seconds=0.5,
            throughput_probe_seconds=0.5,
            throughput_rates=(20.0, 20.0),
            throughput_done_p99=1.0,
            replicas=3,
            replica_threads=(3,),
            replica_messages=2,
            replica_gap=0.05,
            redelivery=0.2,
            crash_threads=0,  # its answers wait out a dead process's thread locks (15 s)
            baseline_sweep=(1, 4),
            baseline_cap=5.0,
        )

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        for name in ("model", "throughput_model"):
            shape: ModelShape = getattr(self, name)
            found[name] |= {"chunks": shape.chunks, "chunk_delay": shape.chunk_delay, "ideal": shape.ideal}
        return found


@dataclass
class Context:
    settings: Settings
    redis_url: str
    workdir: Path
    profile_dir: Path | None = None  # sample the bot with py-spy during every step, into here
    quiet_budget: float = QUIET_WAIT_BUDGET

    async def wait_for_quiet(self) -> float:
        """Between steps the bench is idle: wait (bounded) while other processes keep the CPU busy.

        Returns the seconds waited. The machine may be shared; a step that still runs alongside
        other work says so in its `cpu_share.other`.
        """
        waited = 0.0
        while waited < min(QUIET_WAIT_STEP, self.quiet_budget):
            before = machine_busy_seconds()
            await asyncio.sleep(0.5)
            if (machine_busy_seconds() - before) / 0.5 < OTHER_LOAD_BUSY:
                break
            waited += 0.5
        self.quiet_budget -= waited
        return waited

    async def flush_redis(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def redis_counters(self) -> tuple[float, int, int]:
        """Redis's CPU seconds so far, the commands it has run (this bench's own included), and
        its connected clients (bot pools keep their connections open, so this is their peak)."""
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            cpu, stats = await client.info("cpu"), await client.info("stats")
            clients = await client.info("clients")
        finally:
            await client.aclose()
        seconds = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        return seconds, int(stats["total_commands_processed"]), int(clients["connected_clients"]) - 1

    async def measured(
        self,
        label: str,
        bots: list[BotProcess],
        turns: Callable[[], int],
        load: Awaitable[dict[str, Any]],
        prepare: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run one load step and add what it cost: CPU per turn, CPU shares, peak RSS, loop lag.

        `prepare` (seeding the users' messages, building and signing their events) runs after the
        wait for a quiet machine and before the step's clock and CPU counters start.
        """
        waited = await self.wait_for_quiet()
        profiler = None
        if self.profile_dir is not None:
            profiler = Profiler(bots[0].pid, self.profile_dir / f"{label}.txt")
            await profiler.start()
        if prepare is not None:
            prepare()
        before = [bot.sample() for bot in bots]
        own_before = proc_sample(os.getpid()).cpu_seconds
        redis_before, commands_before, _ = await self.redis_counters()
        machine_before = machine_busy_seconds()
        overflows_before = listen_overflows()
        lag = LoopLag()
        lag.start()
        peaks = [PeakRss(bot.pid) for bot in bots]
        for peak in peaks:
            peak.start()
        started = time.monotonic()
        with _collector_paused() as collected:
            result = await load
        wall = time.monotonic() - started
        loop_lag = await lag.stop()
        after = [bot.sample() for bot in bots]
        bot_cpu = sum(a.cpu_seconds - b.cpu_seconds for a, b in zip(after, before, strict=True))
        loadgen_cpu = proc_sample(os.getpid()).cpu_seconds - own_before
        machine_cpu = machine_busy_seconds() - machine_before
        overflows_after = listen_overflows()
        redis_after, commands_after, redis_clients = await self.redis_counters()
        redis_cpu = redis_after - redis_before
        count = turns()
        result |= {
            "wall_seconds": wall,
            "bot_cpu_ms_per_turn": bot_cpu * 1000 / count if count else None,
            # Redis's share of the work (its Lua scripts are the bot's logic too): the floor has none.
            "redis_cpu_ms_per_turn": redis_cpu * 1000 / count if count else None,
            # Less the INFO calls above; commands run inside Lua scripts and MULTI count too.
            "redis_commands_per_turn": (commands_after - commands_before - 3) / count if count else None,
            "redis_clients": redis_clients,
            "cpu_share": {
                "bot": bot_cpu / wall,
                "loadgen": loadgen_cpu / wall,
                "redis": redis_cpu / wall,
                # Everything else on the machine: other people's work, the kernel, a profiler.
                "other": max(0.0, machine_cpu - bot_cpu - loadgen_cpu - redis_cpu) / wall,
            },
            "bot_peak_rss_mb": max(p.stop() for p in peaks) / 2**20,
            "loadgen_loop_lag": loop_lag,
            # Machine-wide: a connection refused by a full accept queue (the bot's, an emulator's)
            # is retried about a second later, and that second shows in the figures.
            "listen_overflows": (
                overflows_after - overflows_before
                if overflows_before is not None and overflows_after is not None
                else None
            ),
        }
        busy = loadgen_cpu / wall > LOADGEN_BUSY_CPU or (loop_lag["p99"] or 0) > LOADGEN_BUSY_LAG
        result["loadgen_busy"] = busy
        result["machine_shared"] = result["cpu_share"]["other"] > OTHER_LOAD_BUSY
        result["waited_for_quiet_seconds"] = waited
        result["loadgen_collect_seconds"] = collected.seconds
        if profiler is not None:
            result["profile"] = await profiler.stop()
        return result


@dataclass(frozen=True)
class _Collected:
    seconds: float


@contextmanager
def _collector_paused() -> Iterator[_Collected]:
    """No garbage collection in the load generator while a step runs. Its heap (prepared events,
    the emulators' record of every step so far) grows step by step, and its full collections
    paused its loop for 0.05 s early in a run and 0.5 s later, every 8 to 10 s: each pause made
    every answer in flight look that much later, and a 30-s throughput run failed on the
    generator's pauses, not the bot's. Collected between steps instead, and what survives is
    frozen (kept out of later collections): otherwise each step's collection walks the whole record
    so far: after half an hour of `bench.soak`, that (with the step's preparation) most likely
    blocked the loop long enough for a bot in Socket Mode to hear no pong to its ping within 2.5 s,
    close the socket and reconnect; an envelope sent meanwhile was lost (docs/performance.md, "Soak")."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    collected = _Collected(time.perf_counter() - started)  # the loop was blocked this long
    gc.disable()
    try:
        yield collected
    finally:
        gc.enable()
