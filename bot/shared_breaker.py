"""The model's circuit breaker kept in step across every process that shares Redis.

Each process has its own `CircuitBreaker` (bot/breaker.py); this counts the turns that found the
model down in Redis as well, so that `LLM_BREAKER_FAILURES` of them in a row open the breaker
wherever they happened, and says in Redis when one opens, which every process's beat (once a
second) learns. After the cooldown one turn in all processes tries the model (the probe; the
first to claim it in Redis), as one process's breaker lets one through: the others answer at once
meanwhile, as while open. A turn that reaches the model clears the count, and the breaker with it
when it was open (the probe's success). Redis is a help here, not a need: when it cannot be
reached, each process's breaker still counts, opens and probes on its own.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
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
        self._token = uuid.uuid4().hex  # names this process's claim to the probe
        self._probe_claimed = False
        self._closed_token: str | None = None  # the last probe's success this process heard of
        self._releases: set[asyncio.Task[None]] = set()

    async def allow(self) -> bool:
        """May this turn call the model? After the cooldown, only the probe of all processes may."""
        if not self.breaker.allow():
            return False
        if not self.breaker.probing:
            return True
        try:
            claimed, open_seconds_left = await self.store.claim_llm_probe(
                self._token, self.breaker.cooldown_seconds
            )
        except (StoreUnavailable, RedisError, OSError) as error:
            log.warning("model probe not shared error=%s", type(error).__name__)
            return True  # probe alone, as without Redis
        except BaseException:
            self.breaker.released()  # cancelled while asking: not this turn's probe after all
            raise
        if claimed:
            self._probe_claimed = True
            return True
        self.breaker.released()  # another process probes (or found the model down again)
        if open_seconds_left > 0:
            self.breaker.learn(open_seconds_left=open_seconds_left, failures_in_a_row=0)
        return False

    def released(self) -> None:
        """A permitted call ended with no verdict on the model (cancelled, or cut off after it
        spoke): a probe's claim is given back for another process to try at once."""
        self.breaker.released()
        if self._probe_claimed:
            self._probe_claimed = False
            # Not awaited: this runs as the turn is being cancelled, too. Unreleased, the claim
            # lapses after a cooldown.
            release = asyncio.get_running_loop().create_task(
                self._shared(self.store.release_llm_probe(self._token))
            )
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

    async def failed(self) -> None:
        """A turn found the model down after its retries."""
        self._probe_claimed = False  # a failed probe reopens the breaker, which ends the claim
        counted = await self._shared(self.store.llm_failed(), default=0)
        self._failures_counted = counted > 0
        if self.breaker.failed(counted_everywhere=counted):
            await self._shared(self.store.llm_breaker_opened(self.breaker.cooldown_seconds))
            self._failures_counted = False  # the opening cleared the count

    async def succeeded(self) -> None:
        """A turn reached the model."""
        closed = self.breaker.succeeded()
        self._probe_claimed = False  # a success clears the claim along with the breaker
        if closed or self._failures_counted:
            self._failures_counted = False
            await self._shared(self.store.llm_reached(breaker_was_open=closed))

    def heard(self, news: BreakerNews) -> None:
        """What a beat read in Redis: a probe that found the model back, a breaker another
        process opened (since, or still), failed turns counted."""
        if news.closed_token is not None and news.closed_token != self._closed_token:
            if self._closed_token is not None or self.breaker.state != "closed":
                self.breaker.closed_elsewhere()
            self._closed_token = news.closed_token
        self.breaker.learn(open_seconds_left=news.open_seconds_left, failures_in_a_row=news.failures_counted)
        self._failures_counted = news.failures_counted > 0

    @staticmethod
    async def _shared(step: Awaitable[int | None], default: int = 0) -> int:
        try:
            return (await step) or default
        except (StoreUnavailable, RedisError, OSError) as error:
            log.warning("model breaker not shared error=%s", type(error).__name__)
            return default
