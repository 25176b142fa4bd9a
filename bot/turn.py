"""One turn: a user's message in, one outcome out (an answer, or a clear message saying what failed).

A message is first accepted into its thread's inbox in Redis (deduplicated there, so a message
delivered twice, or to two processes, is queued once). Whoever holds the thread's lock then works
through the inbox oldest first, so two quick messages in one thread are answered in order and the
second answer sees the first.

Each turn is journaled as it goes (working; part of the answer visible; an answer Slack would not
take yet; done). A message stays in its inbox until it has its outcome, which is recorded in the
same step that takes it off, so when a process dies mid-turn the lock expires and another process
(or the next start) picks the turn up from its journal: it answers it, delivers the answer kept
for a retry, records the answer it finds in Slack already, or says the answer was interrupted.
Never twice: a worker that stalled past its lock's lifetime posts nothing once another holds it.

A turn costs few round trips to Redis (bot/pipelining.py sends those of concurrent turns together):
a message that opens a thread is queued and its thread locked in one step; the limits, the
question and what the prompt is built from are one step; the outcome and the hand-over of the
lock are one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

from redis.exceptions import RedisError

from bot.breaker import CircuitBreaker
from bot.context import FIRST_PAGE, ContextBuilder
from bot.delivery import (
    Delivery,
    DeliveryError,
    Ending,
    LostCallUnsettled,
    Noticed,
    Reply,
    Target,
    ThinkingSign,
    fits_one_message,
    target_for,
)
from bot.llm import UNAVAILABLE, Answer, ChatMessage, ChatModel, LLMError
from bot.rate_limit import CALL_ERRORS, NO_ANSWER_ERRORS, error_code
from bot.redis_loss import CutShort, Deleted, RedisLossRecovery
from bot.shared_breaker import SharedBreaker
from bot.slack_text import mentioned_users
from bot.store import (
    Accepted,
    Begun,
    Fence,
    ForgetIncomplete,
    IncomingMessage,
    LockLost,
    LockRenewal,
    Progress,
    Queued,
    Store,
    StoreUnavailable,
    ThreadKey,
    Turn,
    TurnRecord,
)
from bot.workspace import Workspace

log = logging.getLogger(__name__)

RESET_CONFIRMATION = "Starting fresh: I've cleared this conversation."
DELIVERY_FAILED = "Sorry, something went wrong while posting my answer. Please ask again."
STORE_UNAVAILABLE = "Sorry, I'm temporarily unavailable. Please try again in a minute."
TURN_FAILED = "Sorry, something went wrong on my side while answering this. Please ask again."
INTERRUPTED = (
    "Sorry, my answer above was interrupted (the bot restarted). Please ask again if you need the rest."
)
GREETING = "Hi! What can I help you with? Ask your question here and I'll answer in this thread."
TOO_LONG = (
    "Your message is {length:,} characters long, more than the {limit:,} I can read. "
    "Please shorten it (paste only the relevant part of a log, for instance) and ask again."
)
LIMITED = {
    1: "You've asked {limit} questions in the last minute, my limit per person. "
    "Please wait a minute and ask again.",
    2: "You've reached today's limit of {limit} questions. Please try again tomorrow, or ask a colleague.",
    3: "This channel has asked {limit} questions in the last minute, my limit per channel. "
    "Please wait a minute and ask again.",
}
# Slack errors after which posting to that conversation cannot succeed, however often we try.
PERMANENT_SLACK_ERRORS = {
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "msg_too_long",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "missing_scope",
}
FORGOTTEN = (
    "Done: I've deleted what I stored about you in this workspace: {messages} stored message(s) "
    "(yours and my answers to them) from {conversations} conversation(s), {records} feedback "
    "record(s), and your cached name. Messages in Slack itself are not affected."
)
FORGET_INCOMPLETE = (
    "Sorry, I couldn't delete everything I stored about you: messages of yours were still arriving "
    "while I deleted them. Please say `forget me` again."
)
# How far back the DM's rolling conversation is searched for the question a DM thread starts from,
# and how many of a DM's messages are read back from Slack once Redis lost them (the prompt takes
# the newest that fit its token budget).
DM_LOOKBACK_TURNS = 60
MAX_DELIVERY_ATTEMPTS = 5
FOLLOWED_MEMORY = 10_000  # threads this process recently answered in, for when Redis is down
ARRIVAL_WAIT_SECONDS = 5.0  # at most, for a message of the thread still being queued here
ABANDON_WAIT_SECONDS = 5.0  # at most, for stopped turns to let go of their threads
# A process says it is alive this often (`beat`); it counts as gone, and the threads it holds are
# taken over, once it has not said so for LIVENESS_BEATS beats (and never sooner than the thread
# locks' own lifetime, when that is shorter). Threads unmoved for ORPHAN_IDLE_SECONDS are checked.
BEAT_SECONDS = 1.0
LIVENESS_BEATS = 5
ORPHAN_IDLE_SECONDS = 1.0
ORPHAN_SCAN_SHARE_OF_BEAT = 0.9


@dataclass(frozen=True)
class Limits:
    """Abuse limits and sizes, from the settings."""

    max_message_chars: int = 12_000
    user_per_minute: int = 10
    user_per_day: int = 300
    channel_per_minute: int = 60


class EarlierThread(Enum):
    """What became of a thread's messages from before the bot's first turn in it."""

    NOT_NEEDED = "not needed"  # a new thread, or one read already
    READ = "read"  # added to the conversation now
    UNREADABLE = "unreadable"  # Slack would not show them now: answered without, read next turn


class DeliveryDeferred(Exception):
    """The answer exists but Slack would not take it now; it is journaled and retried later."""


class TurnRunner:
    def __init__(
        self,
        *,
        store: Store,
        workspace: Workspace,
        delivery: Delivery,
        model: ChatModel,
        context: ContextBuilder,
        breaker: CircuitBreaker,
        limits: Limits,
        max_concurrent_turns: int,
    ) -> None:
        self.store = store
        self.workspace = workspace
        self.delivery = delivery
        self.model = model
        self.context = context
        self.breaker = SharedBreaker(breaker, store)
        self.limits = limits
        # Names this process in its thread locks' tokens, so that others can tell when it is gone.
        self.process_id = uuid.uuid4().hex[:16]
        lock_lifetime = store.lock_ttl_ms / 1000
        self.beat_seconds = min(BEAT_SECONDS, lock_lifetime / LIVENESS_BEATS)
        self._llm_slots = asyncio.Semaphore(max_concurrent_turns)
        self._tasks: set[asyncio.Task[None]] = set()
        self._intake: set[asyncio.Future[Any]] = set()  # events acknowledged, not yet queued
        self._arriving: dict[ThreadKey, set[asyncio.Future[None]]] = {}  # the same, per thread
        self._working_on: dict[ThreadKey, int] = {}  # workers here per thread (two, briefly)
        self._held: dict[ThreadKey, _HeldLock] = {}  # thread locks held here
        self._renewing: asyncio.Task[None] | None = None
        self._poked: set[ThreadKey] = set()
        # Per thread at work here, the ts of messages accepted here and not yet taken: the journals
        # a take of its next message declares (see `Store.take_thread`).
        self._expected: dict[ThreadKey, set[str]] = {}
        self._recently_followed: OrderedDict[ThreadKey, None] = OrderedDict()
        self.redis_loss = RedisLossRecovery(
            store=store, delivery=delivery, workspace=workspace, start_work=self.start_work, spawn=self._spawn
        )
        self._noticed: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._accepted: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # this process's
        # Thinking signs shown on arrival, until the message's turn takes them over.
        self._early_signs: OrderedDict[tuple[str, str, str], asyncio.Task[ThinkingSign]] = OrderedDict()

    # -- entry points ----------------------------------------------------------------------

    async def accept(self, message: IncomingMessage, *, written: str | None = None) -> None:
        """Queue a message (once, however often Slack delivers it) and start working on its thread.
        `written`: the ts of the edit that made it ask the bot, if an edit did (`Store.accept`)."""
        seen = _seen(message)
        if seen in self._accepted:
            # A mention comes twice (message and app_mention), mostly to the same process:
            # known here, it needs no trip to Redis. Redis dedups across processes. Expected for
            # every mention, so not worth an INFO line each.
            log.debug("duplicate delivery ignored team=%s channel=%s ts=%s", *seen)
            return
        self._remember(self._accepted, seen)  # now: the twin event is often already on its way
        if message.action in ("answer", "record"):
            self.workspace.look_up_soon(message.team, message.user)  # for the turn's transcript
        # A message that opens a thread can be taken at once: nothing in its thread can precede
        # it. Any other waits for `take_thread`, a round trip later, which takes the earliest
        # message waiting: a moment for an earlier one that Slack handed over later.
        opens_thread = message.conversation == message.ts
        token = self._new_token() if opens_thread else ""
        # Its first thinking status is counted in the new thread's rate bucket in the same step.
        first_status = (
            self.delivery.status_bucket(target_for(message))
            if opens_thread and message.action == "answer" and message.reply_thread_ts is not None
            else None
        )
        try:
            accepted, taken = await self.store.accept(
                message,
                token,
                first_status,
                earlier_lost=self.redis_loss.dm_history_lost(message.key),
                written=written,
            )
        except StoreUnavailable as error:
            self._accepted.pop(seen, None)
            log.error(
                "redis unavailable, message not queued team=%s channel=%s thread=%s user=%s error=%s",
                *_where(message),
                error,
            )
            # A mention arrives twice (app_mention and message): one notice, not two. Its twin
            # may reach another process and be queued: this notice is no outcome of the question.
            if message.action != "record" and self._first_notice_for(message):
                await self.delivery.post_notice(target_for(message), STORE_UNAVAILABLE, outcome=False)
            return
        except BaseException:
            self._accepted.pop(seen, None)  # not queued: Slack's next delivery of it is no duplicate
            raise
        if accepted is Accepted.DUPLICATE:
            # Slack sending an event again, or a mention's second event that reached another
            # process (most mentions where several share the work: 86,305 of 120,000 over two
            # processes in a twenty-minute soak), so not worth an INFO line each.
            log.debug("duplicate delivery ignored team=%s channel=%s ts=%s", *seen)
            return
        self._remember_followed(message.key)
        if taken is None:
            self.redis_loss.waiting(seen, message)
            self._expected.setdefault(message.key, set()).add(message.ts)
        if accepted in (Accepted.FIRST, Accepted.TAKEN) and message.action == "answer":
            # Its turn comes at once: show the sign now, while the turn gets going alongside.
            counted = accepted is Accepted.TAKEN and first_status is not None
            sign = asyncio.create_task(self._show_sign(message, counted=counted))
            self._remember(self._early_signs, seen, sign)
        if taken is not None:
            # A worker of its own even if one here is ending: that one no longer holds the lock.
            self._spawn(self.work_through(message.key, (taken, token)))
        else:
            self.start_work(message.key)

    async def is_followed(self, key: ThreadKey) -> bool:
        """Does the bot take part in this thread? Falls back to this process's memory if Redis
        is down, so that a follow-up then still gets the 'temporarily unavailable' reply, or came
        back without its data, so that a follow-up is still answered."""
        try:
            followed = await self.store.is_followed(key)
        except StoreUnavailable:
            return key in self._recently_followed
        return followed or (self.redis_loss.noticed and key in self._recently_followed)

    async def remove_message(self, key: ThreadKey, ts: str) -> None:
        self.redis_loss.taken((key.team, key.channel, ts))  # never to be queued again
        for holding in await self._holding(key, ts, deleting=True):  # found before the answer goes
            if await self.store.remove_user_message(holding, ts):
                log.info("deleted message removed team=%s channel=%s thread=%s ts=%s",
                         key.team, key.channel, holding.thread, ts)  # fmt: skip

    async def edit_message(
        self,
        key: ThreadKey,
        ts: str,
        text: str,
        bot_user_id: str,
        *,
        user: str = "",
        edited_ts: str = "",
        is_dm: bool = False,
    ) -> None:
        """A person's message edited: stored (or waiting) as edited, wherever it is held. `user`,
        its author, and `edited_ts`, the edit's own ts (see `Store.edit_user_message`). `is_dm`:
        in a DM, where everything is said to the bot."""
        self.redis_loss.edited((key.team, key.channel, ts), text, edited_ts)
        if not is_dm and mentioned_users(text) - {bot_user_id} and not await self._takes_part_in(key):
            # An edit in a thread the bot takes no part in: its mentions are not worth a
            # users.info call each (Tier 4, shared with every turn's asker).
            return
        readable = await self.workspace.readable(key.team, text, bot_user_id)
        for holding in await self._holding(key, ts):
            await self.store.edit_user_message(holding, ts, readable, text, user=user, edited_ts=edited_ts)

    async def _takes_part_in(self, key: ThreadKey) -> bool:
        """`is_followed`, for an edit: a thread taken part in here is followed still after a loss
        (its meta, which says so, went with it), but Redis down is no reason to drop the edit:
        its event is left unacknowledged, for Slack to send again."""
        if self.redis_loss.noticed and key in self._recently_followed:
            return True
        return await self.store.is_followed(key)

    async def _holding(self, key: ThreadKey, ts: str, *, deleting: bool = False) -> list[ThreadKey]:
        """The conversations that hold a person's message stored in `key`: a DM's also the DM
        threads under the answers to it, which start with a copy of it (`_question_before`).
        `deleting`: its tombstone is left as they are found, so that a DM thread that copies it
        from Slack after this look leaves it out (`Store.merge_read_back`)."""
        dm = key.thread == "dm"
        threads = await self.store.answers_to(key, ts, deleting=deleting) if dm else []
        return [key, *(ThreadKey(key.team, key.channel, thread) for thread in threads)]

    def start_work(self, key: ThreadKey) -> None:
        if key in self._working_on:
            self._poked.add(key)  # the worker looks again before it stops
        else:
            self._spawn(self.work_through(key))

    async def recover(self, idle_seconds: float) -> int:
        """Pick up threads whose queued messages nobody is working on (a crashed or stopped
        process, or a delivery waiting to be retried). Returns how many were started."""
        return self._start_work_on(await self.store.threads_waiting(idle_seconds))

    async def beat(self) -> None:
        """Say that this process is alive, learn whether another found the model down, and
        whether Redis lost its data; call every `beat_seconds`."""
        liveness_ms = int(self.beat_seconds * LIVENESS_BEATS * 1000)
        news = await self.store.beat(self.process_id, liveness_ms, self.redis_loss.to_ask_about())
        await self.redis_loss.heard(news, set(self._held), take_locks_back=lambda: self._renew_due(0))
        self.breaker.heard(news)

    async def take_over_orphans(self) -> int:
        """Start work on waiting threads whose lock holder's process is gone (killed, or stalled
        past its liveness), without waiting for the locks to expire. Returns how many."""
        # Every process beats each second, but one look a beat serves them all (a little under a
        # beat, so that a process's own next look is not shut out by its last).
        found = await self.store.threads_orphaned(
            ORPHAN_IDLE_SECONDS, once_per_seconds=self.beat_seconds * ORPHAN_SCAN_SHARE_OF_BEAT
        )
        return self._start_work_on(found)

    def _start_work_on(self, threads: list[ThreadKey]) -> int:
        """A worker for each thread not worked on here already; how many were started."""
        idle = [key for key in threads if key not in self._working_on]
        for key in idle:
            self.start_work(key)
        return len(idle)

    async def leave(self) -> None:
        """This process stops: the locks it may still hold are free to take over at once."""
        await self.store.leave(self.process_id)

    def _new_token(self) -> str:
        return f"{self.process_id}:{uuid.uuid4().hex}"

    @contextlib.contextmanager
    def taking_in(self, key: ThreadKey | None = None) -> Iterator[None]:
        """Marks a Slack event being turned into a queued message. Its acknowledgement waits for
        this (bot/events.py), at most 2 s, or Bolt's went out already; either way `drain` waits
        for it as for a turn. With its thread's `key`, the thread's worker waits for it too
        before taking a message (`_after_arrivals`)."""
        task = asyncio.current_task()
        arrival: asyncio.Future[None] | None = None
        if key is not None:
            arrival = asyncio.get_running_loop().create_future()
            self._arriving.setdefault(key, set()).add(arrival)
        if task is not None:
            self._intake.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._intake.discard(task)
            if key is not None and arrival is not None:
                arrival.set_result(None)
                arriving = self._arriving[key]
                arriving.discard(arrival)
                if not arriving:
                    del self._arriving[key]

    async def _after_arrivals(self, key: ThreadKey) -> None:
        """Wait until the thread's messages that this process is taking in now are queued. Two
        follow-ups that arrive together reach Redis in whatever order their round trips come
        back (each step may go on another connection); without this wait, the worker could take
        the later one before the earlier one is in the inbox, and answer them out of order."""
        if arriving := self._arriving.get(key):
            await asyncio.wait(list(arriving), timeout=ARRIVAL_WAIT_SECONDS)

    async def drain(self, grace_seconds: float) -> None:
        """Wait (up to `grace_seconds`) for events being taken in and turns in flight, including
        turns those events start; used on shutdown and in tests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while pending := self._tasks | self._intake:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.wait(pending, timeout=remaining)

    async def abandon(self, wait_seconds: float = ABANDON_WAIT_SECONDS) -> bool:
        """Stop what is left; the journal and the inbox keep it for the next process. Waits up to
        `wait_seconds` for the turns to let go of their threads; False if some had not by then."""
        if self._renewing is not None:
            self._renewing.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, wait_seconds))
        return not pending

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- the thread's inbox ----------------------------------------------------------------

    async def work_through(self, key: ThreadKey, taken: tuple[Queued, str] | None = None) -> None:
        """Answer the thread's queued messages in order while holding its lock. `taken`: the
        first message and the lock's token, when accepting it took the lock already."""
        self._working_on[key] = self._working_on.get(key, 0) + 1
        try:
            while True:
                self._poked.discard(key)
                if taken is not None:
                    (queued, token), taken = taken, None
                else:
                    token = self._new_token()
                    await self._after_arrivals(key)
                    found = await self.store.take_thread(key, token, tuple(self._expected.get(key, ())))
                    if found is False:
                        return  # the holder (here or in another process) will reach our message
                    queued = found
                if queued is not None:
                    # False when a delivery was deferred: recovery comes back to the thread later.
                    await self._work_locked(queued, token)
                # A message accepted here while we were finishing found us still at work: its
                # thread is taken again, a deferred answer first (as it would be, had the message
                # come a moment later; before, both waited for recovery, two rounds idle).
                if key not in self._poked:
                    return
        finally:
            if self._working_on[key] > 1:
                self._working_on[key] -= 1
            else:
                del self._working_on[key]
                self._poked.discard(key)
                self._expected.pop(key, None)  # those left are another process's to take

    async def _work_locked(self, queued: Queued, token: str) -> bool:
        """Work through the inbox from `queued` on; `finish` hands the lock back when it is empty.
        False when a delivery was deferred (its message stays first in the inbox)."""
        key = queued.message.key
        held = self._hold(key, token)
        holding = True
        try:
            next_up: Queued | None = queued
            while next_up is not None:
                held.ts, held.message, held.shown, held.sign = next_up.message.ts, next_up.message, None, None
                self.redis_loss.taken(_seen(next_up.message))
                self._expected.get(key, set()).discard(next_up.message.ts)
                try:
                    outcome = await self._take_turn_safely(next_up.message, next_up.record)
                except DeliveryDeferred:
                    # Left in the inbox; recovery retries it later. Kept here too, should Redis
                    # lose it meanwhile (nothing else would answer it then), with what of the
                    # answer showed (a long one's first message) and the sign left up.
                    sign = held.sign or next_up.record.sign
                    await self.redis_loss.deferred(next_up.message, held.shown, sign)
                    return False
                except LockLost:
                    # Found as the answer was about to show: the worker that holds the lock
                    # now answers the message (from the journal), and the thread is its own.
                    log.warning("thread lock taken over by another worker; standing down thread=%s", key)
                    await self.redis_loss.hand_on(next_up.message, held.shown, held.sign)
                    return True
                await self._after_arrivals(key)
                next_up = await self.store.finish(next_up, token, outcome, tuple(self._expected.get(key, ())))
                holding = next_up is not None  # an empty inbox: finish released the lock
            return True
        finally:
            self._let_go(key, token)
            if holding:
                await self.store.release_lock(key, token)

    def _hold(self, key: ThreadKey, token: str) -> _HeldLock:
        worker = asyncio.current_task()
        assert worker is not None
        held = self._held[key] = _HeldLock(token, asyncio.get_running_loop().time(), worker)
        self.redis_loss.held(key)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew_held_locks())
        return held

    def _let_go(self, key: ThreadKey, token: str) -> None:
        """Stop renewing the thread's lock, if `token` still holds it here."""
        held = self._held.get(key)
        if held is not None and held.token == token:
            del self._held[key]

    async def _renew_held_locks(self) -> None:
        """Renew the thread locks held here that have lived a fifth of their lifetime, looking
        every tenth, in one batch (one task for them all, not one per turn); stops when none is
        held. The lifetime is short, so that a dead holder's threads are soon taken over; a lock
        renewed at latest 0.3 of the way through it survives a stall of the rest (the event loop,
        or Redis out of reach). A turn shorter than a fifth of it (most: 3 s by default) is never
        renewed, so a burst of answers costs no renewals. A lock lost to a longer stall is taken
        back if nobody took it meanwhile; if another process did, the turn here stands down,
        since that process now answers the message (from the journal), and going on here too
        would answer it twice."""
        lifetime = self.store.lock_ttl_ms / 1000
        while self._held:
            await asyncio.sleep(lifetime / 10)
            try:
                await self._renew_due(lifetime / 5)
            except Exception as error:  # the task must go on: a lock not renewed is a double answer
                log.warning("thread lock renewal failed error=%s", type(error).__name__)

    async def _renew_due(self, age: float) -> None:
        """One round of `_renew_held_locks`: the locks at least `age` seconds old."""
        now = asyncio.get_running_loop().time()
        due = [(key, held) for key, held in self._held.items() if now - held.since >= age]
        found = await asyncio.gather(
            *(self.store.renew_lock(key, held.token, held.ts) for key, held in due), return_exceptions=True
        )
        for (key, held), outcome in zip(due, found, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("thread lock not renewed thread=%s error=%s", key, type(outcome).__name__)
                continue  # tried again at the next look
            if self._held.get(key) is not held:
                # The turn ended meanwhile; a lock just taken back is nobody's: free it.
                if outcome == LockRenewal.TAKEN_BACK:
                    await self.store.release_lock(key, held.token)
                continue
            if outcome in (LockRenewal.RENEWED, LockRenewal.TAKEN_BACK):
                held.since = now
                if outcome == LockRenewal.TAKEN_BACK:
                    log.warning("thread lock expired and taken back thread=%s", key)
            elif outcome == LockRenewal.TAKEN_OVER:
                del self._held[key]
                log.warning("thread lock taken over by another worker; standing down thread=%s", key)
                held.worker.cancel()
                if held.message is not None:
                    self._spawn(self.redis_loss.hand_on(held.message, held.shown, held.sign))
            # Else not held, its message finished: by this turn, which lets go of it in a moment,
            # or by another worker while this one stalled. Kept (looked at again next round)
            # until the turn lets go: its next post is fenced off by it and stands down, where
            # without it (`_fence`) the post went unfenced, a second note or answer.

    # -- one turn --------------------------------------------------------------------------

    async def _take_turn_safely(self, message: IncomingMessage, record: TurnRecord) -> Progress:
        """A turn that fails in an unforeseen way still ends with a message, never silence.
        Returns the outcome to record as the message leaves the inbox."""
        try:
            outcome = await self._take_turn(message, record)
        except (DeliveryDeferred, asyncio.CancelledError, LockLost):
            self._cancel_early_sign(message)
            raise
        except Exception as error:
            log.exception(
                "turn failed team=%s channel=%s thread=%s user=%s error=%s",
                *_where(message),
                type(error).__name__,
            )
            await self.delivery.post_notice(target_for(message), TURN_FAILED)
            outcome = Progress.of(state="failed")
        # A turn that ended without an answer (a refusal, a greeting, a finished turn) takes
        # away the sign shown when its message came in.
        if (early := self._early_signs.pop(_seen(message), None)) is not None:
            await self.delivery.clear_thinking(await early, answered=False)
        return outcome

    async def _show_sign(self, message: IncomingMessage, *, counted: bool = False) -> ThinkingSign:
        try:
            sign = await self.delivery.show_thinking(target_for(message), counted=counted)
        except Exception as error:  # a sign is not worth losing the turn over
            log.warning("thinking sign failed error=%s", type(error).__name__)
            return ThinkingSign(target_for(message), "none")
        if sign.kind == "reaction":
            # A turn interrupted now leaves a reaction that whoever resumes it takes away.
            try:
                await self.store.record_progress(message, sign=sign.kind)
            except (RedisError, OSError) as error:
                log.warning("thinking sign not journaled error=%s", type(error).__name__)
        return sign

    def _sign_for(self, message: IncomingMessage) -> asyncio.Task[ThinkingSign]:
        """The sign shown when the message came in, or a new one, on its way alongside the turn."""
        early = self._early_signs.pop(_seen(message), None)
        return early if early is not None else asyncio.create_task(self._show_sign(message))

    def _cancel_early_sign(self, message: IncomingMessage) -> None:
        early = self._early_signs.pop(_seen(message), None)
        if early is not None and not early.done():
            early.cancel()

    async def _take_turn(self, message: IncomingMessage, record: TurnRecord) -> Progress:
        if record.state in ("answered", "noted", "failed"):
            return Progress()  # finished before a crash; only taking it off the inbox was lost
        # Queued again as it stood down with its answer showing (`RedisLossRecovery.hand_on`): resumed too.
        handed_on = record.look_first and record.answer_ts is not None
        if handed_on and record.state == "queued":
            # Unless a worker elsewhere resumed it before a later loss, which took the journal
            # that said so but not this process's memory: noted then, not noted again (one more
            # read, after a loss only).
            looked = await self.redis_loss.look_in_slack(message)
            if isinstance(looked, Deleted | Progress):
                if record.sign == "reaction":
                    await self.delivery.clear_sign(target_for(message), "reaction")
                return looked if isinstance(looked, Progress) else Progress.of(state="noted")
        resume = record.state == "working" or handed_on
        if resume and (resumed := await self._resume(message, record)) is not None:
            return resumed
        if record.deleted:
            log.info("turn team=%s channel=%s thread=%s user=%s outcome=deleted", *_where(message))
            return Progress.of(state="noted")  # deleted before its turn came: nothing to answer
        if record.edited_text is not None:
            message = replace(message, text=record.edited_text)  # edited before its turn came
        if record.look_first and record.state == "queued":
            looked = await self.redis_loss.look_in_slack(message)
            if isinstance(looked, Deleted):
                return Progress.of(state="noted")
            if not isinstance(looked, IncomingMessage) and record.sign == "reaction":
                # Left up by a turn whose delivery was deferred before the loss: settled here.
                await self.delivery.clear_sign(target_for(message), "reaction")
            if isinstance(looked, CutShort):
                # Kept for `hand_on` as a resumed answer is: standing down after a further loss,
                # the next look, under a newer answer, would not find it (the sign is gone).
                self._shown_before(message, looked.answer_ts, None)
                return await self._interrupted(message, looked.answer_ts)
            if isinstance(looked, Progress):
                return looked
            message = looked
        if message.action == "reset":
            await self.store.reset(message.key)
            await self.delivery.post_notice(target_for(message), RESET_CONFIRMATION)
            log.info("turn team=%s channel=%s thread=%s user=%s outcome=reset", *_where(message))
            return Progress.of(state="answered")
        if message.action == "forget":
            return await self._forget(message)
        if message.action == "record":
            said = await self._question(message, record)
            return Progress.of(turns=said, user_turn_stored=1, state="answered")
        if (refusal := await self._refusal(message)) is not None:
            await self.delivery.post_notice(target_for(message), refusal)
            return Progress.of(state="noted")
        return await self._answer(message, record)

    async def _forget(self, message: IncomingMessage) -> Progress:
        """`forget me`: everything stored about the person goes, and they are told what did, or
        that it could not all go (they kept writing in a conversation meanwhile) and to ask again."""
        try:
            forgotten = await self.store.forget_user(message.team, message.user, before=message.ts)
        except ForgetIncomplete as error:
            # Not a fault of the bot's: no traceback, and no notice that says something broke.
            log.warning(
                "turn team=%s channel=%s thread=%s user=%s outcome=forget_incomplete kept_writing_in=%s",
                *_where(message),
                error,
            )
            await self.delivery.post_notice(target_for(message), FORGET_INCOMPLETE)
            return Progress.of(state="noted")
        self.workspace.forget_name(message.team, message.user)
        await self.delivery.post_notice(target_for(message), FORGOTTEN.format(**asdict(forgotten)))
        log.info(
            "turn team=%s channel=%s thread=%s user=%s outcome=forgotten messages=%d conversations=%d",
            *_where(message),
            forgotten.messages,
            forgotten.conversations,
        )
        return Progress.of(state="answered")

    async def _resume(self, message: IncomingMessage, record: TurnRecord) -> Progress | None:
        """A turn a previous process started and did not finish: its outcome when handled here;
        None when nothing of it reached the user, so it is simply answered again."""
        log.info(
            "resuming interrupted turn team=%s channel=%s thread=%s user=%s answer_ready=%s visible=%s",
            *_where(message),
            record.answer is not None,
            record.answer_ts is not None,
        )
        target = target_for(message)
        # Whether its last message is in Slack already (posted, the process died before the
        # outcome was recorded), or its first, cut short (the process died as it showed, before
        # noting it), is looked up only when a post may have happened.
        looked = record.posting or record.answer_ts
        found = await self.delivery.find_answer(target, message.bot_user_id) if looked else None
        if isinstance(found, Noticed):
            # Its outcome posted (the note that the answer was interrupted, once the answer was
            # closed, say) by a process that died before recording it: not posted again.
            log.info("notice found posted already team=%s channel=%s thread=%s user=%s", *_where(message))
            # The answer given up for it may stream still (its stop failed, or the process died
            # before closing it): closed, as after any crash, or it shows as being written for good.
            for ts in await self._given_up(message, record, found):
                await self.delivery.end_abandoned(target, ts)
            if record.sign == "reaction":
                await self.delivery.clear_sign(target, "reaction")
            return Progress.of(state="noted")
        if found is not None and not found.complete and found.ts in await self.store.stored_ts(message.key):
            # An earlier turn's answer, shown after this question was asked, that a person
            # stopped (so it has no buttons): not the beginning of this one's.
            found = None
        if found is not None and found.complete:
            log.info("answer found posted already team=%s channel=%s thread=%s user=%s", *_where(message))
            ts = record.answer_ts or found.ts
            stored = Turn(
                role="assistant", text=found.text, ts=ts, reply_to=message.ts, messages=found.messages
            )
            outcome = Progress.of(turns=(stored,), state="answered", answer_ts=ts, answer=None)
        elif (shown := record.answer_ts or (found.ts if found else None)) is not None:
            self._shown_before(message, shown, record.sign)
            if record.answer_ts is None:
                log.info("answer found cut short team=%s channel=%s thread=%s user=%s", *_where(message))
            if record.answer is not None and fits_one_message(record.answer) and found and found.ts == shown:
                # Left by a lost call Slack could not be asked about, with the whole answer kept:
                # its one message is given the rest rather than called interrupted. Only when
                # Slack shows it is the bot's last message here: a journaled first message with
                # another after it (a stream Slack ended early, the rest posted) would show that
                # other's text twice, and without a read of the thread nothing is known.
                reply = self._reply(message, target)
                reply.go_on_in(shown)
                reply.write(record.answer)
                posted, outcome = await self._finish_reply(
                    message, reply, _journaled_ending(record), record.answer, None
                )
                if reply.stopped_by_user and posted:
                    # The person stopped it: the conversation keeps what shows, not what they never saw.
                    stored = Turn(
                        role="assistant",
                        text=found.text,
                        ts=posted[0],
                        reply_to=message.ts,
                        messages=tuple(posted),
                    )
                    outcome = Progress.of(turns=(stored,), state="answered", answer_ts=posted[0], answer=None)
                if record.sign == "reaction":
                    await self.delivery.clear_sign(target, "reaction")
                return outcome
            if found is not None and found.ts != shown:
                # A long answer's later message, begun unseen (the journal names only its first,
                # closed as the next began): closed too, or it streams for good.
                await self.delivery.end_abandoned(target, found.ts)
            outcome = await self._interrupted(message, shown)
        elif record.answer is not None:
            reply = self._reply(message, target)
            reply.write(record.answer)
            _, outcome = await self._finish_reply(
                message, reply, _journaled_ending(record), record.answer, None
            )
        else:
            return None
        if record.sign == "reaction":
            await self.delivery.clear_sign(target, "reaction")
        return outcome

    async def _given_up(self, message: IncomingMessage, record: TurnRecord, noticed: Noticed) -> list[str]:
        """The messages of an answer given up for the notice found (`Noticed.begun`), with the
        journaled first: not an earlier turn's answer, shown after this question (a stopped one)."""
        begun = [ts for ts in noticed.begun if ts != record.answer_ts]
        if begun:
            try:
                stored = await self.store.stored_ts(message.key)
            except (RedisError, OSError) as error:
                # All stopped then (a bare stop of a finished message does nothing): failing the
                # turn here would post a second notice under the one found.
                log.warning("stored answers not read error=%s", type(error).__name__)
                stored = set()
            begun = [ts for ts in begun if ts not in stored]
        return [record.answer_ts, *begun] if record.answer_ts is not None else begun

    def _shown_before(self, message: IncomingMessage, shown: str, sign: str | None) -> None:
        """The answer's first message, shown before this turn (which resumes it, or found it
        cut short in its look), and the sign left up then: kept with the lock as an answer's own
        are (`_reply`), for `hand_on` should the turn stand down after Redis lost its data (and
        the journal that said so)."""
        held = self._held.get(message.key)
        if held is not None and held.ts == message.ts:
            held.shown, held.sign = shown, held.sign or sign

    async def _interrupted(self, message: IncomingMessage, shown: str) -> Progress:
        """An answer cut short when its process died, or before Redis lost its data: closed,
        with a note asking the person to ask again. The note is posted only while this worker
        holds the thread's lock (else LockLost), as an answer is: one that took the thread over
        after a further loss resumes the question and notes it, and could not see a note of
        this worker's that Slack had not shown yet."""
        target = target_for(message)
        await self.delivery.end_abandoned(target, shown)
        await self.delivery.post_notice(target, INTERRUPTED, fence=self._fence(message))
        return Progress.of(state="noted")

    async def _close_streams(self, reply: Reply) -> None:
        """An answer given up for a notice: nothing more of it shown, and its messages that may
        still stream stopped bare first, so that no notice goes under an answer Slack shows as
        still being written. A stop Slack fails here too is logged and the notice goes all the
        same (better than silence); a turn resumed after a crash closes it (`_given_up`)."""
        reply.abandon()
        for ts in reply.left_streaming:
            await self.delivery.end_abandoned(reply.target, ts)

    def _fence(self, message: IncomingMessage) -> Fence | None:
        """The thread's lock as held here, for a post about `message` to check (`Fence`)."""
        held = self._held.get(message.key)
        return Fence(message.key, held.token, message.ts) if held is not None else None

    async def _refusal(self, message: IncomingMessage) -> str | None:
        """A short reply instead of a model call: the message is empty or too long. (The abuse
        limits are checked in the answer's first step.)"""
        text = await self.workspace.readable(message.team, message.text, message.bot_user_id)
        if not text:
            return GREETING
        if len(text) > self.limits.max_message_chars:
            return TOO_LONG.format(length=len(text), limit=self.limits.max_message_chars)
        return None

    def _limit_checks(self, message: IncomingMessage) -> list[tuple[str, str, int, int]]:
        limits = self.limits
        return [
            ("user-minute", message.user, limits.user_per_minute, 60),
            ("user-day", message.user, limits.user_per_day, 86_400),
            ("channel-minute", message.channel, limits.channel_per_minute, 60),
        ]

    async def _answer(self, message: IncomingMessage, record: TurnRecord) -> Progress:
        started = time.monotonic()
        target = target_for(message)
        # The sign goes up alongside: the model is asked without waiting for Slack to show it.
        sign = self._sign_for(message)
        answer: Answer | None = None
        reply: Reply | None = None
        outcome = "answered"
        answered = False
        try:
            # The question joins the conversation in the step that checks the limits and marks
            # the turn begun, which also reads back what the prompt is built from.
            question = await self._question(message, record)
            checks = self._limit_checks(message)
            begun = await self.store.begin_answer(message, question, checks, FIRST_PAGE)
            if begun.deleted:
                outcome = "deleted"
                return Progress.of(state="noted")
            if begun.over_limit:
                outcome = f"limited:{checks[begun.over_limit - 1][0]}"
                limit = checks[begun.over_limit - 1][2]
                notice = LIMITED[begun.over_limit].format(limit=limit)
                answered = await self.delivery.post_notice(target, notice) is not None
                return Progress.of(state="noted")
            asked = _unstored(message, question, begun)
            earlier = await self._read_earlier_thread(message, begun.hydrated, forgotten=asked is not None)
            if earlier is EarlierThread.READ:
                prompt = await self.context.prompt_for(message.key, asked=asked)
            else:
                assert begun.summary is not None
                prompt = await self.context.prompt_for(
                    message.key,
                    (begun.summary, begun.newest_turns),
                    earlier_unread=earlier is EarlierThread.UNREADABLE,
                    asked=asked,
                )
            reply = self._reply(message, target, after=sign)
            answer, ending = await self._ask_model(prompt.messages, reply)
            posted, step = await self._finish_reply(message, reply, ending, answer.text, answer)
            answered = bool(posted)
            outcome = ending.value
            if prompt.needs_summary:
                # In the background: the answer is already out, and nothing waits for this.
                self._spawn(self.context.summarise(message.key))
            return step
        except LLMError as error:
            outcome = f"llm_error:{error.kind}"
            if reply is not None:
                reply.abandon()  # it showed nothing (an answer of only blanks, say): no task left waiting
            answered = await self.delivery.post_notice(target, error.user_message) is not None
            return Progress.of(state="noted")
        except DeliveryDeferred:
            outcome = "delivery_deferred"
            held = self._held.get(message.key)
            if held is not None and held.ts == message.ts and sign.done() and not sign.cancelled():
                held.sign = sign.result().kind  # left up for the retry (`RedisLossRecovery.deferred`)
            raise
        except (asyncio.CancelledError, LockLost):
            # Shutting down, or standing down for a worker that took the thread over: the
            # journal hands the turn on. Nothing more of this answer is shown from here.
            outcome = "interrupted"
            if reply is not None:
                reply.abandon()
            raise
        except Exception:
            # Unforeseen: the turn ends with a notice (`_take_turn_safely`), under no open stream.
            outcome = "failed"
            if reply is not None:
                await self._close_streams(reply)
            raise
        finally:
            if outcome not in ("delivery_deferred", "interrupted"):
                await self.delivery.clear_thinking(await sign, answered=answered)
            log.info(
                "turn team=%s channel=%s thread=%s user=%s model=%s prompt_tokens=%s "
                "completion_tokens=%s attempts=%s latency_ms=%d outcome=%s",
                *_where(message),
                self.model.model,
                answer.prompt_tokens if answer else None,
                answer.completion_tokens if answer else None,
                answer.attempts if answer else None,
                (time.monotonic() - started) * 1000,
                outcome,
            )
            log.debug("turn text ts=%s question=%r", message.ts, message.text)

    async def _question(self, message: IncomingMessage, record: TurnRecord) -> tuple[Turn, ...]:
        """The person's message as the turn stores it; nothing when stored already. A forgotten
        one's is never stored, so a turn begun again after a crash still needs it for its prompt."""
        if record.user_turn_stored and not record.forgotten:
            return ()
        # A copy a newer turn read back from Slack meanwhile gives way in the step that stores it.
        return (await self.workspace.user_turn(message),)

    def _reply(
        self, message: IncomingMessage, target: Target, after: asyncio.Task[ThinkingSign] | None = None
    ) -> Reply:
        """A reply that journals the moment part of it becomes visible in Slack (before it is
        whole), shows nothing before the thinking sign `after` is up, and posts nothing once
        another worker holds the thread's lock."""

        async def visible(ts: str) -> None:
            if held is not None and held.ts == message.ts:
                held.shown = ts  # known here should the journal have gone with Redis's data
                if after is not None and after.done() and not after.cancelled():
                    held.sign = after.result().kind  # up by now: nothing shows before it
            await self.store.record_progress(message, answer_ts=ts)

        held = self._held.get(message.key)
        return self.delivery.reply(
            target,
            on_visible=visible,
            after=after,
            fence=self._fence(message),
            stored=lambda: self.store.stored_ts(message.key),
        )

    async def _ask_model(self, prompt: list[ChatMessage], reply: Reply) -> tuple[Answer, Ending]:
        """Stream the model's answer into the reply unless the breaker is open; tell the
        breaker how it went."""
        if not await self.breaker.allow():
            raise LLMError("circuit_open", UNAVAILABLE, attempts=0)
        try:
            async with self._llm_slots:
                answer, ending = await self._write_answer(prompt, reply)
        except LLMError as error:
            if error.model_down:
                await self.breaker.failed()
            else:
                self.breaker.released()
            raise
        except BaseException:
            self.breaker.released()
            raise
        if ending is Ending.CUT_OFF:
            self.breaker.released()  # it spoke, then broke: no verdict on its health
        else:
            await self.breaker.succeeded()
        return answer, ending

    async def _write_answer(self, prompt: list[ChatMessage], reply: Reply) -> tuple[Answer, Ending]:
        """Stream the model's answer into the reply; says how it ended. Raises LLMError only when
        nothing was written (a failure after that keeps the text and ends it as cut off)."""
        async with self.model.stream(prompt) as stream:
            try:
                async for text in stream:
                    if not reply.write(text):
                        return stream.answer, Ending.STOPPED  # leaving the stream ends the generation
            except LLMError as error:
                if not error.partial:
                    raise
                return stream.answer, Ending.CUT_OFF
        answer = stream.answer
        if answer.complete:
            return answer, Ending.COMPLETE
        endings = {"length": Ending.TRUNCATED, "content_filter": Ending.FILTERED}
        return answer, endings.get(answer.finish_reason or "", Ending.CUT_OFF)

    async def _finish_reply(
        self, message: IncomingMessage, reply: Reply, ending: Ending, text: str, answer: Answer | None
    ) -> tuple[list[str], Progress]:
        """Give the answer its final form; returns its messages and the outcome to record (the
        answer joins the conversation as its message leaves the inbox, in one step, so a crash
        cannot repeat it, call it interrupted, or leave it out of the conversation). A Slack
        outage before any of it was visible defers it (journaled, retried later) rather than
        drop it."""
        target = reply.target
        try:
            posted = await reply.finish(ending)
        except (DeliveryError, *NO_ANSWER_ERRORS) as error:
            code = error.code if isinstance(error, DeliveryError) else error_code(error)
            attempts = await self.store.count_attempt(message)
            # A lost call Slack could not be asked about may have shown the whole answer: recovery
            # looks in Slack before it finishes it (the journal notes a post may have happened).
            shown_for_sure = reply.shown and not isinstance(error, LostCallUnsettled)
            if shown_for_sure or code in PERMANENT_SLACK_ERRORS or attempts >= MAX_DELIVERY_ATTEMPTS:
                log.error(
                    "answer could not be delivered team=%s channel=%s thread=%s user=%s error=%s attempts=%d",
                    *_where(message),
                    code,
                    attempts,
                )
                await self._close_streams(reply)
                await self.delivery.post_notice(target, DELIVERY_FAILED)
                return [], Progress.of(state="failed", answer=None)
            log.warning(
                "answer delivery deferred team=%s channel=%s thread=%s user=%s error=%s attempts=%d",
                *_where(message),
                code,
                attempts,
            )
            # Kept for the retry, with how it ended: its note (length limit, cut off) goes with it.
            await self.store.record_progress(message, answer=text, ending=ending.value)
            raise DeliveryDeferred(code) from None
        if not posted:
            return posted, Progress.of(state="answered", answer=None)
        stored = Turn(
            role="assistant",
            text=text,
            ts=posted[0],
            prompt_tokens=answer.prompt_tokens if answer else None,
            completion_tokens=answer.completion_tokens if answer else None,
            finish_reason=answer.finish_reason if answer else None,
            reply_to=message.ts,
            messages=tuple(posted),
        )
        return posted, Progress.of(turns=(stored,), state="answered", answer_ts=posted[0], answer=None)

    async def _read_earlier_thread(
        self, message: IncomingMessage, hydrated: bool, *, forgotten: bool = False
    ) -> EarlierThread:
        """A mention inside a thread the bot was not part of, or a DM whose earlier messages Redis
        lost: read what came before, once. `forgotten`: its person said `forget me` while the
        message waited, after all that is read here, so nothing of theirs is stored again."""
        key = message.key
        if hydrated:
            return EarlierThread.NOT_NEEDED
        workspace, bot_user = self.workspace, message.bot_user_id
        question: list[Turn] = []  # a DM thread's: the question its answer was for, copied
        linked = True  # the DM's conversation links that answer to it: its deletion finds the copy
        try:
            if key.thread == "dm":
                if not self.redis_loss.dm_history_lost(key):
                    return EarlierThread.NOT_NEEDED  # no loss noticed: a new DM costs no Tier 3 call
                earlier = await workspace.earlier_dm_turns(key, message.ts, bot_user, DM_LOOKBACK_TURNS)
            elif message.starts_conversation:
                return EarlierThread.NOT_NEEDED
            else:
                earlier = await workspace.earlier_thread_turns(
                    key, key.thread, message.ts, bot_user, is_dm=message.is_dm
                )
                if message.is_dm:
                    question, linked = await self._question_before(message, earlier)
                    earlier = _after_question(question, earlier)
        except CALL_ERRORS as error:
            # Answer without the earlier messages rather than not at all; try again next turn.
            log.warning("could not read earlier thread thread=%s error=%s", key, error_code(error))
            return EarlierThread.UNREADABLE
        if forgotten:
            earlier = _without_theirs(earlier, message.user)
        # Noted only when the DM's conversation does not link them (Redis lost it): else a field
        # that nothing takes out, written on every DM thread's first reply.
        copy_of = question[0].ts if question and not linked else None
        # Merged in Slack's order with what turns stored since (after a loss, say), in one step.
        await self.store.merge_read_back(key, earlier, copy_of=copy_of)
        return EarlierThread.READ

    async def _question_before(self, message: IncomingMessage, thread: list[Turn]) -> tuple[list[Turn], bool]:
        """A DM thread under one of the bot's answers starts with the question that answer was for:
        the turn before it in the DM's rolling conversation, or, when Redis lost that, in Slack.
        With it, whether the DM's conversation stores that answer linked to it (`answers_to`)."""
        if not thread or thread[0].role != "assistant":
            return [], True
        dm = ThreadKey(message.team, message.channel, "dm")
        rolling = await self.store.recent_turns(dm, DM_LOOKBACK_TURNS)
        at = next((i for i, turn in enumerate(rolling) if turn.ts == thread[0].ts), None)
        if at is not None:
            before = rolling[at - 1 : at]
        elif thread[0].ts == message.conversation and self.redis_loss.dm_history_lost(dm):
            before = await self.workspace.earlier_dm_turns(dm, thread[0].ts, message.bot_user_id, 1)
        else:
            before = []
        question = [turn for turn in before if turn.role == "user"]
        linked = at is not None and bool(question) and rolling[at].reply_to == question[0].ts
        return question, linked

    def _first_notice_for(self, message: IncomingMessage) -> bool:
        """Dedup without Redis, for the outage notice: this process's recent memory only."""
        seen = (message.team, message.channel, message.ts)
        if seen in self._noticed:
            return False
        self._remember(self._noticed, seen)
        return True

    def _remember_followed(self, key: ThreadKey) -> None:
        self._remember(self._recently_followed, key)

    @staticmethod
    def _remember(memory: OrderedDict[Any, Any], item: Any, value: Any = None) -> None:
        memory[item] = value
        memory.move_to_end(item)
        while len(memory) > FOLLOWED_MEMORY:
            memory.popitem(last=False)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("turn crashed error=%s", type(error).__name__, exc_info=error)


def _journaled_ending(record: TurnRecord) -> Ending:
    """How a journaled answer ended, for the note it shows with (length limit, cut off, filtered);
    a stop pressed, or a journal from before endings were kept, finishes it as complete."""
    noted = (Ending.TRUNCATED, Ending.CUT_OFF, Ending.FILTERED)
    ending = next((e for e in noted if e.value == record.ending), None)
    return ending if ending is not None else Ending.COMPLETE


def _after_question(question: list[Turn], thread: list[Turn]) -> list[Turn]:
    """A DM thread under one of the bot's answers, after the question that answer was for (if
    found), the answer linked to it as read-back answers are (bot/workspace.py)."""
    if not question:
        return thread
    return [*question, replace(thread[0], reply_to=question[0].ts), *thread[1:]]


def _without_theirs(turns: list[Turn], user: str) -> list[Turn]:
    """Turns read back without a person's messages and the bot's answers to them."""
    theirs = {turn.ts for turn in turns if turn.role == "user" and turn.user == user}
    return [turn for turn in turns if turn.ts not in theirs and turn.reply_to not in theirs]


def _seen(message: IncomingMessage) -> tuple[str, str, str]:
    return message.team, message.channel, message.ts


def _unstored(message: IncomingMessage, question: tuple[Turn, ...], begun: Begun) -> Turn | None:
    """The question being answered when its turn did not store it (the turns its first step read
    back do not end with it): its person said `forget me` while it waited, and it is answered all
    the same (they asked it), as an edit that came after its turn took it says, as a stored one
    would be. None in every other turn."""
    newest = begun.newest_turns
    if not question or (newest and newest[-1].role == "user" and newest[-1].ts == message.ts):
        return None
    return question[0] if begun.edited is None else replace(question[0], text=begun.edited)


def _where(message: IncomingMessage) -> tuple[str, str, str, str]:
    return message.team, message.channel, message.conversation, message.user


@dataclass
class _HeldLock:
    """A thread lock held here: its token, when (loop time) it was last set, the task that works
    through the thread under it, the message (and its ts) it works on now, and where its answer
    began to show and the thinking sign shown for it then (for `RedisLossRecovery.hand_on`)."""

    token: str
    since: float
    worker: asyncio.Task[Any]
    ts: str = ""
    message: IncomingMessage | None = None
    shown: str | None = None  # the ts of the answer's first message, once it shows
    sign: str | None = None  # the thinking sign's kind, once the answer shows or is deferred
