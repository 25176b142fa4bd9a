"""The bots under test as real processes: `python app.py`, the tutorial-style baseline, or the floor.

Each runs in a scratch directory (so no developer's .env is read) with its output in a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.measure import ProcSample, tree_sample

ROOT = Path(__file__).resolve().parent.parent
BOT_APP = ROOT / "app.py"
BASELINE_APP = ROOT / "bench" / "baseline" / "app.py"
FLOOR_APP = ROOT / "bench" / "floor" / "app.py"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0  # the bot gives answers in flight 20 s on SIGTERM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BotProcess:
    """One bot process: start it, wait until it serves, read its CPU and memory, stop it."""

    def __init__(self, name: str, app: Path, env: dict[str, str], port: int, workdir: Path) -> None:
        self.name = name
        self.app = app
        self.env = env
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        self._last_pid: int | None = None

    @property
    def pid(self) -> int:
        """The running process's id; while it is stopped (a soak's restart), the last one's."""
        if self._process is not None:
            return self._process.pid
        assert self._last_pid is not None, f"{self.name} was never started"
        return self._last_pid

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    def sample(self) -> ProcSample:
        """Its CPU and memory, with its children's; nothing while it is stopped."""
        if self._process is None:
            return ProcSample(0.0, 0, 0)
        return tree_sample(self.pid)

    async def every_process_started(self, count: int, within: float = START_TIMEOUT) -> None:
        """With PROCESSES = count > 1: wait until each of the supervisor's processes serves."""
        deadline = time.monotonic() + within
        while self.log_path.read_text(errors="replace").count("bot started") < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not all {count} processes started; see {self.log_path}")
            await asyncio.sleep(0.1)

    async def start(self, ready: str = "health") -> None:
        """Spawn it and wait until it is ready: `health` (GET /health says 200), `port` (the port
        accepts connections) or `spawned` (the caller waits, e.g. for its Socket Mode connection)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "REDIS_"))}
        env |= self.env | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self.app),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._last_pid = self._process.pid
        if ready == "spawned":
            return
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
                if await self._ready(session, ready):
                    return
                await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"{self.name} was not ready within {START_TIMEOUT}s:\n{self.log_tail()}")

    async def _ready(self, session: aiohttp.ClientSession, ready: str) -> bool:
        if ready == "port":
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True
        try:
            timeout = aiohttp.ClientTimeout(total=1)
            async with session.get(f"http://127.0.0.1:{self.port}/health", timeout=timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash or the kernel's OOM killer would end it; `stop` then reaps it."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        return await process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
