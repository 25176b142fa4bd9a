"""The thread lock's scripts against a real Redis: renewal (and taking a lock back), and the take
over of a lock whose process stopped saying it is alive."""

from __future__ import annotations

import asyncio

import pytest

from bot.store import Accepted, IncomingMessage, LockRenewal, Store, ThreadKey
from tests.conftest import wait_until

OPENING = IncomingMessage("T1", "C1", "1.1", "U1", "<@UB> hi", "answer", "1.1", "1.1", "UB")
FOLLOW_UP = IncomingMessage("T1", "C1", "1.2", "U1", "more", "answer", "1.1", "1.1", "UB")
THREAD = OPENING.key


@pytest.fixture
async def store(redis_url: str):
    store = Store(redis_url, conversation_ttl_days=1)
    yield store
    await store.close()


async def test_renewal_renews_its_own_lock_and_takes_back_an_expired_one_only_for_an_unfinished_turn(
    store: Store,
) -> None:
    assert (await store.accept(OPENING, "p1:mine"))[0] is Accepted.TAKEN
    lock, journal = store.keys.lock(THREAD), store.keys.journal("T1", "C1", "1.1")
    assert await store.renew_lock(THREAD, "p1:mine", "1.1") is LockRenewal.RENEWED
    assert await store.renew_lock(THREAD, "p1:someone-else", "1.1") is LockRenewal.TAKEN_OVER

    await store.redis.delete(lock)  # expired during a stall; the turn is still unfinished
    assert await store.renew_lock(THREAD, "p1:mine", "1.1") is LockRenewal.TAKEN_BACK
    assert await store.redis.get(lock) == "p1:mine"

    # Another worker took the thread during the stall, answered the message and let the lock go:
    # nothing is taken back, even with a newer message waiting in the inbox.
    await store.redis.delete(lock)
    await store.redis.hset(journal, "state", "answered")
    await store.accept(FOLLOW_UP, "")
    assert await store.renew_lock(THREAD, "p1:mine", "1.1") is LockRenewal.RELEASED
    assert await store.redis.get(lock) is None


async def test_a_lock_whose_process_went_silent_is_taken_over_and_listed_as_orphaned(store: Store) -> None:
    assert (await store.accept(OPENING, "aaaa:turn"))[0] is Accepted.TAKEN
    await store.beat("aaaa", 300)
    await store.beat("bbbb", 60_000)
    assert await store.take_thread(THREAD, "bbbb:turn") is False  # its holder is alive
    assert await store.threads_orphaned(0) == []

    await asyncio.sleep(0.4)  # aaaa's liveness lapses
    assert await store.threads_orphaned(0) == [THREAD]
    # Gated, as every process asks each beat: the first to ask within the period looks, the
    # others get nothing until it ends (the first has taken the thread over by then).
    # A period the second ask falls within even on a loaded machine (0.3 s left it little room),
    # and waited out by its key, not by a guessed sleep.
    assert await store.threads_orphaned(0, once_per_seconds=1.0) == [THREAD]
    assert await store.threads_orphaned(0, once_per_seconds=1.0) == []

    async def period_over() -> bool:
        return not await store.redis.exists(store.keys.orphan_scan)

    await wait_until(period_over, "the look's period to end")
    assert await store.threads_orphaned(0, once_per_seconds=1.0) == [THREAD]
    taken = await store.take_thread(THREAD, "bbbb:turn")
    assert taken and taken.message == OPENING
    assert await store.redis.get(store.keys.lock(THREAD)) == "bbbb:turn"
    assert await store.threads_orphaned(0) == []


async def test_a_lock_of_a_process_that_left_is_taken_over_one_without_a_process_is_not(store: Store) -> None:
    other = ThreadKey("T1", "C2", "2.1")
    second = IncomingMessage("T1", "C2", "2.1", "U1", "<@UB> hi", "answer", "2.1", "2.1", "UB")
    assert (await store.accept(OPENING, "cccc:turn"))[0] is Accepted.TAKEN
    assert (await store.accept(second, "a-token-of-no-process"))[0] is Accepted.TAKEN
    await store.beat("cccc", 60_000)
    await store.leave("cccc")  # stopped: its locks are free to take over at once
    assert await store.threads_orphaned(0) == [THREAD]
    assert (await store.beat("dddd", 60_000)).peers == 0  # nor is it alive to another's beat
    assert await store.take_thread(THREAD, "dddd:turn")
    # A token that names no process (as before the beats) waits for its lock to expire.
    assert await store.take_thread(other, "dddd:turn") is False


async def test_a_lock_taken_after_redis_lost_its_data_is_not_taken_over_before_its_process_beats(
    store: Store,
) -> None:
    """Redis lost its data, the processes' set with it: a process is named there again from its
    next beat, up to a second later, and a lock it takes before that is its own all the same.
    Before, another process took it over meanwhile (its holder taken for gone): a newer
    follow-up's turn stood down, and its question was asked of the model a second time
    (`test_redis_loss.py::test_with_several_processes_a_resumed_turn_that_stands_down_after_a_second_loss_is_not_given_again`)."""
    await store.beat("aaaa", 60_000)
    await store.beat("bbbb", 60_000)
    await store.redis.flushall()
    assert (await store.accept(OPENING, "aaaa:turn"))[0] is Accepted.TAKEN  # before aaaa's next beat
    await store.beat("bbbb", 60_000)
    assert await store.threads_orphaned(0) == []
    assert await store.take_thread(THREAD, "bbbb:turn") is False
    assert await store.redis.get(store.keys.lock(THREAD)) == "aaaa:turn"


async def test_a_beat_that_reaches_redis_after_its_process_left_does_not_bring_it_back(store: Store) -> None:
    """A process stopping cancels its beats and says it left, but a beat already on the wire (or
    in a batch on its way) can run after that. Before, it made the process alive again for its
    liveness: its locks waited 5 s to be taken over, and others counted it as a peer."""
    assert (await store.accept(OPENING, "cccc:turn"))[0] is Accepted.TAKEN
    await store.beat("cccc", 60_000)
    await store.leave("cccc")
    await store.beat("cccc", 60_000)  # sent before the leave, run after it
    assert await store.threads_orphaned(0) == [THREAD]
    assert (await store.beat("dddd", 60_000)).peers == 0
    assert (await store.shared_state()).processes_alive == 1  # dddd
    assert await store.take_thread(THREAD, "dddd:turn")
