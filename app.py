"""Entry point: load .env, check the settings, run the bot; with PROCESSES > 1, supervise that
many bot processes (bot/supervisor.py). `python app.py --check` checks the settings and exits."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from dotenv import find_dotenv, load_dotenv

from bot.supervisor import (
    Supervisor,
    process_count,
    process_index,
    ready_fd,
    usable_cores,
    usable_memory,
    wants_several,
)

APP = Path(__file__).resolve()
LOCAL_REDIS_DIR = APP.parent / "var" / "redis"
USAGE = "run `python app.py`, or `python app.py --check` to check the settings and exit"


def main(argv: list[str]) -> int:
    # .env from the working directory; the real environment wins over it.
    load_dotenv(find_dotenv(usecwd=True), override=False)
    if argv == ["--check"]:
        return check()
    if argv:
        print(f"error: unknown arguments {' '.join(argv)!r}: {USAGE}.", file=sys.stderr)
        return 2
    if wants_several(os.environ):
        return supervise()
    return run()


def check() -> int:
    from bot.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    mode = "Socket Mode" if settings.socket_mode else "HTTP mode"
    processes = f"{settings.processes} process" + ("es" if settings.processes > 1 else "")
    print(f"settings are valid: {mode}, {processes}, model {settings.openai_model}")
    return 0


def run() -> int:
    """One bot process: alone, or one of a supervisor's."""
    # Imported here, not above: a supervisor does without the bot's libraries and tokenizer.
    from bot.config import ConfigError, Settings
    from bot.local_redis import LocalRedis, LocalRedisError
    from bot.logs import configure_logging
    from bot.server import StartupError, serve

    local_redis: LocalRedis | None = None
    try:
        settings = Settings.from_env()
        index = process_index(os.environ)
        source = "" if index is None else f"process={index + 1}/{settings.processes}"
        configure_logging(settings.log_level, settings.secrets(), source=source)
        redis_url = settings.redis_url
        if redis_url is None:
            local_redis = LocalRedis(LOCAL_REDIS_DIR)
            local_redis.start()
            redis_url = local_redis.url
        # asyncio's own event loop, not uvloop: under a burst of new HTTP connections uvloop
        # served the first arrivals' whole turns before it took in the later requests (ack p99
        # 2.0-2.5 s against 0.6-0.7 s for 500 questions, close to Slack's 3-s retry), for 2-5 %
        # less CPU a turn in steady load. docs/performance.md has the figures.
        supervisor_pid = os.getppid() if index is not None else None
        asyncio.run(serve(settings, redis_url, supervisor_pid=supervisor_pid, ready_fd=ready_fd(os.environ)))
    except (ConfigError, LocalRedisError, StartupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if local_redis is not None:
            local_redis.stop()
    return 0


def supervise() -> int:
    """PROCESSES > 1: check the settings once (in a process of its own, so that this one never
    holds the tokenizer's tables), then keep that many bot processes running."""
    from bot.local_redis import LocalRedis, LocalRedisError
    from bot.logs import configure_logging

    checked = subprocess.run([sys.executable, str(APP), "--check"], stdout=subprocess.DEVNULL, check=False)
    if checked.returncode != 0:
        return checked.returncode  # its one line, naming the setting, is on stderr
    env = dict(os.environ)
    count = process_count(env["PROCESSES"], socket_mode=bool(env.get("SLACK_APP_TOKEN", "").strip()))
    if count == 1:  # `auto` on one core
        return run()
    configure_logging((env.get("LOG_LEVEL") or "INFO").strip().upper(), source="supervisor")
    if env["PROCESSES"].strip().lower() == "auto":
        memory = usable_memory()
        logging.getLogger("bot.supervisor").info(
            "PROCESSES=auto: %d processes (%d usable cores; %s of memory, 160 MB a process)",
            count,
            usable_cores(),
            f"{memory / 2**30:.1f} GiB" if memory is not None else "unknown",
        )
    local_redis: LocalRedis | None = None
    try:
        if not env.get("REDIS_URL", "").strip():
            # Started once, here; every process is given its URL.
            local_redis = LocalRedis(LOCAL_REDIS_DIR)
            local_redis.start()
            env["REDIS_URL"] = local_redis.url
        return asyncio.run(Supervisor(APP, count, env).run())
    except LocalRedisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if local_redis is not None:
            local_redis.stop()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C while starting (imports, the settings check): nothing to stop
        sys.exit(130)
