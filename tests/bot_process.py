"""The bot as a real process (`python app.py`), for tests that kill it or stop it with a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

APP = Path(__file__).resolve().parents[1] / "app.py"


class BotProcess:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"bot-{env['PORT']}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    async def start(self) -> None:
        await self.spawn()
        await self.wait_healthy()

    async def spawn(self) -> None:
        """Start it without waiting for it to serve."""
        # stderr to a file: a pipe nobody reads would block the bot once it fills.
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, str(APP), cwd=self.workdir, stdout=log, stderr=log,
                env={"PATH": os.environ["PATH"], **self.env},
            )  # fmt: skip

    async def wait_healthy(self, within: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        async with aiohttp.ClientSession() as session:
            while asyncio.get_running_loop().time() < deadline:
                assert self.process is not None and self.process.returncode is None, self.log()
                try:
                    async with session.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"bot never became healthy:\n{self.log()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, within: float = 30.0) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), within)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
