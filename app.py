"""Entry point: load .env, read and check the settings, run the bot (or, with PROCESSES > 1,
a supervisor of that many bot processes)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from dotenv import find_dotenv, load_dotenv

from bot.config import ConfigError, Settings
from bot.local_redis import LocalRedis, LocalRedisError
from bot.logs import configure_logging
from bot.server import StartupError, serve
from bot.supervisor import Supervisor, process_index

APP = Path(__file__).resolve()
LOCAL_REDIS_DIR = APP.parent / "var" / "redis"


def main() -> int:
    # .env from the working directory; the real environment wins over it.
    load_dotenv(find_dotenv(usecwd=True), override=False)
    local_redis: LocalRedis | None = None
    try:
        settings = Settings.from_env()
        index = process_index(os.environ)
        supervising = settings.processes > 1 and index is None
        configure_logging(settings.log_level, settings.secrets(), source=_source(settings, index))
        redis_url = settings.redis_url
        if redis_url is None:
            # Started once, by the supervisor when there is one; its processes are given its URL.
            local_redis = LocalRedis(LOCAL_REDIS_DIR)
            local_redis.start()
            redis_url = local_redis.url
        if supervising:
            env = dict(os.environ) | {"REDIS_URL": redis_url}
            return asyncio.run(Supervisor(APP, settings.processes, env).run())
        # asyncio's own event loop, not uvloop: under a burst of new HTTP connections uvloop
        # served the first arrivals' whole turns before it took in the later requests (ack p99
        # 2.0-2.5 s against 0.6-0.7 s for 500 questions, close to Slack's 3-s retry), for 2-5 %
        # less CPU a turn in steady load. docs/performance.md has the figures.
        supervisor_pid = os.getppid() if index is not None else None
        asyncio.run(serve(settings, redis_url, supervisor_pid=supervisor_pid))
    except (ConfigError, LocalRedisError, StartupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if local_redis is not None:
            local_redis.stop()
    return 0


def _source(settings: Settings, index: int | None) -> str:
    """How each log line names its process when several share the output."""
    if settings.processes == 1:
        return ""
    return "supervisor" if index is None else f"process={index + 1}/{settings.processes}"


if __name__ == "__main__":
    sys.exit(main())
