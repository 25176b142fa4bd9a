"""The model's circuit breaker kept in step across every process that shares Redis.

Each process has its own `CircuitBreaker` (bot/breaker.py); this counts the turns that found the
model down in Redis as well, so that `LLM_BREAKER_FAILURES` of them in a row open the breaker
wherever they happened, and says in Redis when one opens, which every process's beat (once a
second) learns. A turn that reaches the model clears the count, and the breaker with it when it
was open (the probe's success). Redis is a help here, not a need: when it cannot be reached, each
process's breaker still counts and opens on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from redis.exceptions import RedisError

from bot.breaker import CircuitBreaker
from bot.store import BreakerNews, Store, StoreUnavailable

log = logging.getLogger(__name__)


class SharedBreaker:
    def __init__(self, breaker: CircuitBreaker, store: Store) -> None:
        self.breaker = breaker
        self.store = store
        self._failures_counted = False  # Redis holds failed turns that a success should clear

    def allow(self) -> bool:
        return self.breaker.allow()

    def released(self) -> None:
        self.breaker.released()

    async def failed(self) -> None:
        """A turn found the model down after its retries."""
        counted = await self._shared(self.store.llm_failed(), default=0)
        self._failures_counted = counted > 0
        if self.breaker.failed(counted_everywhere=counted):
            await self._shared(self.store.llm_breaker_opened(self.breaker.cooldown_seconds))
            self._failures_counted = False  # the opening cleared the count

    async def succeeded(self) -> None:
        """A turn reached the model."""
        closed = self.breaker.succeeded()
        if closed or self._failures_counted:
            self._failures_counted = False
            await self._shared(self.store.llm_reached(breaker_was_open=closed))

    def heard(self, news: BreakerNews) -> None:
        """What a beat read in Redis: a breaker another process opened, failed turns counted."""
        self.breaker.learn(open_seconds_left=news.open_seconds_left, failures_in_a_row=news.failures_counted)
        self._failures_counted = news.failures_counted > 0

    @staticmethod
    async def _shared(step: Awaitable[int | None], default: int = 0) -> int:
        try:
            return (await step) or default
        except (StoreUnavailable, RedisError, OSError) as error:
            log.warning("model breaker not shared error=%s", type(error).__name__)
            return default
