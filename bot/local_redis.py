"""A private redis-server for `make run` when REDIS_URL is unset: data under ./var/redis,
append-only, on a unix socket so it never clashes with another Redis on the machine."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 10.0


class LocalRedisError(Exception):
    """The local Redis could not be started; the message says what to do."""


class LocalRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalRedisError(
                "REDIS_URL is not set and no redis-server was found: install Redis "
                "(apt-get install redis-server, or brew install redis) or set REDIS_URL."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            return  # one left running by an earlier run: reuse it
        self.process = subprocess.Popen(
            [
                binary,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--logfile", str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for the bot must not stop Redis before the bot
            # has finished the answers in flight; the bot stops it last.
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalRedisError(
                    f"the local redis-server exited at start; see {self.data_dir / 'redis.log'}"
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise LocalRedisError(f"the local redis-server did not start; see {self.data_dir}/redis.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        import redis  # here: a PROCESSES supervisor, which starts this Redis, imports no client

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False
