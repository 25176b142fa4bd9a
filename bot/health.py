"""GET /health: 200 when the bot can work (Redis answers; the socket is up in Socket Mode), else 503
naming the failing part; also the LLM circuit breaker's state. Never a secret or exception text.
From SIGTERM on, 503 "stopping": a load balancer takes the process out of rotation while it
finishes its answers (events that still reach it are taken, as at any other time)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.breaker import CircuitBreaker
from bot.store import Store

CHECK_TIMEOUT = 2.0


def health_handler(
    store: Store,
    *,
    mode: str,
    socket_connected: Callable[[], Awaitable[bool]] | None,
    breaker: CircuitBreaker,
    stopping: Callable[[], bool],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def health(_: web.Request) -> web.Response:
        if stopping():
            return web.json_response({"status": "stopping", "mode": mode}, status=503)
        checks: dict[str, str] = {}
        try:
            redis_ok = await asyncio.wait_for(store.ping(), CHECK_TIMEOUT)
        except TimeoutError:
            redis_ok = False
        checks["redis"] = "ok" if redis_ok else "unreachable"
        if socket_connected is not None:
            checks["slack_socket"] = "ok" if await socket_connected() else "disconnected"
        failing = sorted(name for name, state in checks.items() if state != "ok")
        body: dict[str, object] = {
            "status": "ok" if not failing else "error",
            "mode": mode,
            "checks": checks,
            # The model being down is reported, not failed: the bot is up and says so to users.
            "llm_breaker": breaker.state,
        }
        if failing:
            body["failing"] = failing
        return web.json_response(body, status=200 if not failing else 503)

    return health
