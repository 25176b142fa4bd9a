"""The model's circuit breaker on its own (bot/breaker.py), shared by two breakers through a real
Redis (bot/shared_breaker.py); with real processes in test_outages.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.breaker import CircuitBreaker
from bot.shared_breaker import SharedBreaker
from bot.store import Store

COOLDOWN = 0.3


@pytest.fixture
async def store(redis_url: str):
    store = Store(redis_url, conversation_ttl_days=1)
    yield store
    await store.close()


async def _two_processes_after_a_cooldown(store: Store) -> tuple[SharedBreaker, SharedBreaker]:
    """Two processes' breakers, both opened by the first's failed turn and now past the cooldown."""
    first, second = (
        SharedBreaker(CircuitBreaker(failures_to_open=1, cooldown_seconds=COOLDOWN), store) for _ in range(2)
    )
    assert await first.allow()
    await first.failed()
    second.heard(await store.beat("second", 5000))
    assert first.breaker.state == second.breaker.state == "open"
    await asyncio.sleep(COOLDOWN + 0.05)
    assert first.breaker.state == second.breaker.state == "half_open"
    return first, second


def test_the_failure_that_opens_it_says_so_and_so_does_the_success_that_closes_it() -> None:
    breaker = CircuitBreaker(failures_to_open=2, cooldown_seconds=60)
    assert breaker.succeeded() is False  # closed already: nothing to tell
    assert breaker.failed() is False
    assert breaker.failed() is True
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.succeeded() is True
    assert breaker.state == "closed"


def test_one_opened_elsewhere_keeps_it_open_for_the_rest_of_that_cooldown_then_lets_a_probe_through() -> None:
    breaker = CircuitBreaker(failures_to_open=5, cooldown_seconds=60)
    breaker.learn(open_seconds_left=0.2, failures_in_a_row=0)
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.25)
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one probe at a time


def test_one_opened_elsewhere_never_shortens_its_own_cooldown_and_nothing_left_changes_nothing() -> None:
    breaker = CircuitBreaker(failures_to_open=1, cooldown_seconds=60)
    breaker.learn(open_seconds_left=0, failures_in_a_row=0)
    assert breaker.state == "closed"
    breaker.failed()
    breaker.learn(open_seconds_left=0.01, failures_in_a_row=0)
    time.sleep(0.02)
    assert breaker.state == "open"


def test_failures_counted_in_all_processes_open_it_though_this_one_saw_fewer() -> None:
    breaker = CircuitBreaker(failures_to_open=3, cooldown_seconds=60)
    assert breaker.failed(counted_everywhere=2) is False
    assert breaker.failed(counted_everywhere=3) is True  # this process's second, the third in all
    assert breaker.state == "open"


def test_the_row_counted_in_all_processes_wins_over_this_one_s_own_count() -> None:
    breaker = CircuitBreaker(failures_to_open=2, cooldown_seconds=60)
    assert breaker.failed(counted_everywhere=1) is False
    # Another process reached the model (Redis's count restarted) before this one's beat said so.
    assert breaker.failed(counted_everywhere=1) is False
    assert breaker.failed() is True  # Redis out of reach: this process counts on its own


def test_a_success_elsewhere_ends_this_process_s_row_of_failures() -> None:
    breaker = CircuitBreaker(failures_to_open=2, cooldown_seconds=60)
    breaker.failed(counted_everywhere=1)
    breaker.learn(open_seconds_left=0, failures_in_a_row=0)  # another process reached the model
    assert breaker.failed(counted_everywhere=1) is False
    assert breaker.state == "closed"


async def test_after_a_cooldown_one_probe_goes_out_of_all_processes_and_its_success_lets_all_through(
    store: Store,
) -> None:
    first, second = await _two_processes_after_a_cooldown(store)
    assert await second.allow()  # the probe
    assert not await first.allow()  # the other process answers at once meanwhile
    assert not await second.allow()  # and so does the probing one, as one process's breaker does
    await second.succeeded()
    assert second.breaker.state == "closed"
    assert await first.allow()  # no breaker, no claim: its next turn goes through
    await first.succeeded()
    assert first.breaker.state == "closed"
    assert await store.redis.exists(store.keys.llm_probe, store.keys.llm_breaker) == 0


async def test_a_failed_probe_reopens_the_breaker_and_the_others_learn_it_when_they_ask(store: Store) -> None:
    first, second = await _two_processes_after_a_cooldown(store)
    assert await first.allow()
    await first.failed()
    assert first.breaker.state == "open"
    assert not await second.allow()
    assert second.breaker.state == "open"  # learned from the claim's answer, before its next beat
    await asyncio.sleep(COOLDOWN + 0.05)
    assert await second.allow()  # the next cooldown's probe may be anyone's


async def test_a_probe_that_ends_with_no_verdict_lets_another_process_probe_at_once(store: Store) -> None:
    first, second = await _two_processes_after_a_cooldown(store)
    assert await first.allow()
    first.released()  # cancelled: nothing learned about the model
    for _ in range(50):
        if await store.redis.exists(store.keys.llm_probe) == 0:
            break
        await asyncio.sleep(0.01)
    assert await second.allow()


async def test_a_probe_claim_whose_process_died_lapses_after_a_cooldown(store: Store) -> None:
    first, second = await _two_processes_after_a_cooldown(store)
    assert await first.allow()  # and never reports back
    assert not await second.allow()
    await asyncio.sleep(COOLDOWN + 0.05)
    assert await second.allow()


async def test_without_redis_each_process_probes_on_its_own(redis_url: str) -> None:
    store = Store(redis_url, conversation_ttl_days=1)
    breaker = SharedBreaker(CircuitBreaker(failures_to_open=1, cooldown_seconds=COOLDOWN), store)
    await breaker.failed()
    await store.close()
    unreachable = Store("redis://127.0.0.1:1", conversation_ttl_days=1)
    breaker.store = unreachable
    await asyncio.sleep(COOLDOWN + 0.05)
    try:
        assert await breaker.allow()
        assert not await breaker.allow()
    finally:
        await unreachable.close()


async def test_a_turn_cancelled_while_claiming_the_probe_leaves_the_next_free_to_probe(store: Store) -> None:
    first, _ = await _two_processes_after_a_cooldown(store)
    asking = asyncio.create_task(first.allow())
    await asyncio.sleep(0)  # it has let a probe through locally and waits for Redis
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert not first.breaker.probing
    assert await first.allow()  # its own claim, if Redis took it, is still its own
