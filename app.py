"""Entry point: load .env, read and check the settings, run the bot."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from dotenv import find_dotenv, load_dotenv

from bot.config import ConfigError, Settings
from bot.local_redis import LocalRedis, LocalRedisError
from bot.logs import configure_logging
from bot.server import StartupError, serve

LOCAL_REDIS_DIR = Path(__file__).resolve().parent / "var" / "redis"


def main() -> int:
    # .env from the working directory; the real environment wins over it.
    load_dotenv(find_dotenv(usecwd=True), override=False)
    local_redis: LocalRedis | None = None
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.secrets())
        redis_url = settings.redis_url
        if redis_url is None:
            local_redis = LocalRedis(LOCAL_REDIS_DIR)
            local_redis.start()
            redis_url = local_redis.url
        # asyncio's own event loop, not uvloop: under a burst of new HTTP connections uvloop
        # served the first arrivals' whole turns before it took in the later requests (ack p99
        # 2.0-2.5 s against 0.6-0.7 s for 500 questions, close to Slack's 3-s retry), for 2-5 %
        # less CPU a turn in steady load. docs/performance.md has the figures.
        asyncio.run(serve(settings, redis_url))
    except (ConfigError, LocalRedisError, StartupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if local_redis is not None:
            local_redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
