"""Optional: sample a bot process with py-spy during a load step, and say where its CPU went.

`python -m bench --profile` writes py-spy's collapsed stacks next to the results and puts, for each
step, the busiest functions and the share of samples each library appears in into the JSON.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Where a frame's file lives says whose code it is.
LIBRARIES = {
    "bot": "/bot/",
    "openai": "/openai/",
    "httpx2": "/httpx2/",
    "httpcore": "/httpcore",
    "pydantic": "/pydantic",
    "slack_bolt": "/slack_bolt/",
    "slack_sdk": "/slack_sdk/",
    "aiohttp": "/aiohttp/",
    "redis": "/redis/",
    "asyncio": "/asyncio/",
    "logging": "/logging/",
    "json": "/json/",
    "ssl/socket": "/socket.py",
}
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:]*)(?::\d+)?\)$")


class Profiler:
    """py-spy record on one process, from start() until stop()."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self._process: asyncio.subprocess.Process | None = None

    @staticmethod
    def binary() -> str | None:
        """py-spy from this Python's environment, or else from PATH."""
        return shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath]))

    @classmethod
    def available(cls) -> bool:
        return cls.binary() is not None

    async def start(self) -> None:
        binary = self.binary()
        assert binary is not None, "py-spy is not installed"
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--nonblocking",
            "--full-filenames",
            "--output",
            str(self.out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.3)  # py-spy attaches before the load starts

    async def stop(self) -> dict[str, Any]:
        if self._process is None:
            return {}
        self._process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            await asyncio.wait_for(self._process.wait(), 20)
        except TimeoutError:
            self._process.kill()
        return summarize(self.out) | {"stacks": str(self.out)}


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Samples in all; the functions most often on top of the stack; each library's inclusive share."""
    own: Counter[str] = Counter()
    own_library: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"samples": 0}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = FRAME.match(frames[-1])
        own[_short(leaf) if leaf else frames[-1]] += count
        own_library[_library(leaf["file"]) if leaf else "other"] += count
        seen = set()
        for frame in frames:
            match = FRAME.match(frame)
            if match:
                seen |= {name for name, marker in LIBRARIES.items() if marker in match["file"]}
        for name in seen:
            inclusive[name] += count
    return {
        "samples": total,
        "top_own": [{"function": f, "share": n / total} for f, n in own.most_common(top)] if total else [],
        "library_share": {k: n / total for k, n in inclusive.most_common()} if total else {},
        # Whose code was running: the library of the frame on top of the stack.
        "own_library_share": {k: n / total for k, n in own_library.most_common()} if total else {},
    }


def _library(file: str) -> str:
    found = next((name for name, marker in LIBRARIES.items() if marker in file), None)
    if found:
        return found
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    return "python (stdlib, other)"


def _short(frame: re.Match[str]) -> str:
    file = frame["file"]
    for marker in ("site-packages/", "/lib/python3", "/work/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{frame['function']} ({file})"
