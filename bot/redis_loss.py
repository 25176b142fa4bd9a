"""What a process does when Redis comes back without the bot's data (restarted without
persistence, or failed over to a replica that was behind).

The loss is noticed at a beat: this process's own liveness entry is gone. Then the messages it
accepted and not yet answered, which went with their thread's inbox and which Slack will not send
again, are queued again; DMs read their earlier messages back from Slack; and a message that
another process may have answered, or been told was deleted, is looked up in Slack before it is
answered. See docs/reliability.md, row 13.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from bot.delivery import Delivery, target_for
from bot.lost_answers import ts_number
from bot.store import (
    Accepted,
    BreakerNews,
    IncomingMessage,
    Progress,
    Store,
    StoreUnavailable,
    ThreadKey,
    Turn,
)
from bot.workspace import Workspace

log = logging.getLogger(__name__)

WAITING_MEMORY = 1_000  # messages accepted here and not yet taken here
# At most, for a rate slot to look in Slack before answering a message queued again after Redis
# lost its data (a rare event, when many may look at once): five of Slack's minutes.
LOOK_WAIT_SECONDS = 300.0

Seen = tuple[str, str, str]  # a message's workspace, channel and ts


@dataclass(frozen=True)
class CutShort:
    """The message's answer is in Slack, cut short before the loss: to be closed and noted as
    interrupted, as when a process dies while it shows an answer."""

    answer_ts: str


@dataclass(frozen=True)
class Deleted:
    """The message is gone from Slack: nothing to answer, and no sign on it to take away."""


@dataclass(frozen=True)
class _Requeue:
    """A message to queue again, and how: one Redis refused to queue again, or one a turn here
    handed on as it stood down (`hand_on`)."""

    message: IncomingMessage
    look_first: bool
    shown: str | None
    sign: str | None

    @property
    def order(self) -> Decimal:
        return ts_number(self.message.ts) or Decimal(0)

    def over(self, earlier: _Requeue | None) -> _Requeue:
        """This, kept in place of `earlier` (for the same message) without losing what that knew:
        a look first stays; the answer shown and the sign up are this one's when it knows them,
        else still the earlier one's (a later call that did not see them does not undo them)."""
        if earlier is None:
            return self
        return replace(
            self,
            look_first=self.look_first or earlier.look_first,
            shown=self.shown or earlier.shown,
            sign=self.sign or earlier.sign,
        )


class RedisLossRecovery:
    """Keeps what this process needs if Redis loses its data, and acts on the loss once noticed.

    `start_work` starts a worker on a thread (or pokes the one at work); `spawn` runs a task the
    process waits for on shutdown."""

    def __init__(
        self,
        *,
        store: Store,
        delivery: Delivery,
        workspace: Workspace,
        start_work: Callable[[ThreadKey], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.workspace = workspace
        self._start_work = start_work
        self._spawn = spawn
        self.noticed = False  # Redis lost its data since this process started
        self._noticed_at: float | None = None  # when this process last noticed that (monotonic)
        self._has_beaten = False
        self._alone = False  # no other process was alive at the last beat
        # Once a loss is noticed: the threads held here lately, and whether this process was alone.
        self._queue_again_after: tuple[set[ThreadKey], bool] | None = None
        # Messages accepted here and not yet taken by a worker here (queued again or not: Redis
        # may lose them again before their turn), and the threads held here since the last beat:
        # what `_queue_again` needs.
        self._waiting: OrderedDict[Seen, IncomingMessage] = OrderedDict()
        self._edited_at: dict[Seen, str] = {}  # of those edited: their newest edit's ts
        self._held_since_beat: set[ThreadKey] = set()
        # Messages whose queueing again Redis refused: tried again at the next beat.
        self._unqueued: OrderedDict[Seen, _Requeue] = OrderedDict()
        self._retrying = False
        # Messages a turn here let go of: handed on as it stood down (queued again with what
        # showed), or left in the inbox when Slack would not take the answer (`deferred`). Kept,
        # like those waiting, until taken here or over, should Redis lose them (again).
        self._handed_on: OrderedDict[Seen, _Requeue] = OrderedDict()

    # -- what is kept meanwhile ------------------------------------------------------------

    def waiting(self, seen: Seen, message: IncomingMessage) -> None:
        """Accepted here; no worker here has taken it yet."""
        self._waiting[seen] = message
        while len(self._waiting) > WAITING_MEMORY:
            self._edited_at.pop(self._waiting.popitem(last=False)[0], None)

    def taken(self, seen: Seen) -> None:
        """Taken by a worker here, or deleted: never to be queued again."""
        self._waiting.pop(seen, None)
        self._edited_at.pop(seen, None)
        self._unqueued.pop(seen, None)
        self._handed_on.pop(seen, None)

    def edited(self, seen: Seen, text: str, edited_ts: str = "") -> None:
        """Edited while it waits: queued again as edited, by its newest edit (Slack's `edited.ts`),
        as Redis keeps it (`Store.edit_user_message`): the events of two edits may come in either
        order. An edit with no ts counts as the newest, as there."""
        if (message := self._waiting.get(seen)) is None:
            return
        # As numbers (`ts_number`, exact): as strings, ts of unlike lengths misorder.
        this, newest = ts_number(edited_ts), ts_number(self._edited_at.get(seen))
        if this is not None and newest is not None and this < newest:
            return
        self._edited_at[seen] = edited_ts
        self._waiting[seen] = replace(message, text=text)

    def held(self, key: ThreadKey) -> None:
        self._held_since_beat.add(key)

    def to_ask_about(self) -> list[Seen]:
        """The messages a beat asks Redis about: those any process finished are forgotten
        (`heard`), since after a loss each one left costs a read of Slack."""
        return list(dict.fromkeys([*self._waiting, *self._handed_on]))

    def dm_history_lost(self, key: ThreadKey) -> bool:
        """Redis lost its data (noticed here) lately enough that a DM's rolling conversation may
        have held messages it has no more; past the conversations' lifetime it would not."""
        if key.thread != "dm" or self._noticed_at is None:
            return False
        return time.monotonic() - self._noticed_at < self.store.conversation_ttl

    # -- the loss --------------------------------------------------------------------------

    async def heard(
        self, news: BreakerNews, held_now: set[ThreadKey], take_locks_back: Callable[[], Awaitable[None]]
    ) -> None:
        """A beat's news: forget the messages finished elsewhere, notice a loss, and at the beat
        after one queue again what went with it."""
        for seen in news.over:
            self._waiting.pop(seen, None)
            self._edited_at.pop(seen, None)
            self._unqueued.pop(seen, None)
            self._handed_on.pop(seen, None)
        # Not at a beat that notices a loss: like queueing again (below), retries wait for the beat
        # after, when every process alive has noticed it and taken its thread locks back.
        if self._unqueued and not self._retrying and news.remembered:
            self._retrying = True
            self._spawn(self._queue_unqueued())
        if (lost := self._queue_again_after) is not None and news.remembered:
            self._queue_again_after = None
            threads, alone_before = lost
            # Alone at the beats before and after the loss: nobody else can have answered the
            # messages, nor been told of their deletion. Else they are looked up in Slack first.
            alone = alone_before and news.peers == 0
            self._spawn(self._queue_again(threads if alone else None))
        if self._has_beaten and not news.remembered:
            self.noticed = True
            self._noticed_at = time.monotonic()
            log.warning(
                "redis came back without the bot's data (restarted without persistence, or failed "
                "over to a replica that was behind): conversations are read again from Slack; "
                "messages waiting for their turn are queued again threads_held_here=%d",
                len(held_now),
            )
            # The locks held here went too: taken back now, before the other processes (which
            # decide at their next beat) queue their messages again, so that a message a turn
            # here is answering waits for it, and is then found answered.
            try:
                await take_locks_back()
            except Exception as error:  # the beat must go on; the renewals try again soon
                log.warning("thread locks not taken back error=%s", type(error).__name__)
            # Decided at the next beat, once every process still alive has said so again. A loss
            # noticed before this one and not yet acted on is acted on with it.
            threads, alone = self._held_since_beat | held_now, self._alone
            if (earlier := self._queue_again_after) is not None:
                threads, alone = threads | earlier[0], alone and earlier[1]
            self._queue_again_after = (threads, alone)
        self._has_beaten = True
        self._alone = news.peers == 0
        self._held_since_beat = set()

    async def _queue_again(self, threads: set[ThreadKey] | None) -> None:
        """The messages accepted here and waiting for their turn went with their thread's inbox
        (acknowledged to Slack, they are not sent again): queue them again, in order, for a
        worker to reach. Each is kept here until a worker here takes it, or a beat finds its turn
        over: should Redis lose its data again before then, it is queued again once more.

        `threads`: this process was alone, at the beats before and after the loss: only the
        messages of the threads it worked on lately, as they are (nobody else can have answered
        them, nor been told of their deletion). None: other processes were alive, and a message
        here may be one another answered, or was told was deleted: all the messages here not
        seen finished, each marked for its worker to look in Slack first (`look_in_slack`)."""
        if threads is not None:
            # A message let go here (a deferred answer, say) waits in its inbox with those behind
            # it, in a thread that need not have been held here lately.
            threads = threads | {how.message.key for how in self._handed_on.values()}
        lost = [
            _Requeue(m, threads is None, None, None)
            for seen, m in self._waiting.items()
            if (threads is None or m.key in threads) and seen not in self._handed_on
        ]
        lost += self._handed_on.values()  # as they were let go of: looked up first, with what showed
        log.info(
            "after the loss, waiting messages to queue again count=%d look_first=%s",
            len(lost),
            threads is None,
        )
        refused: set[ThreadKey] = set()
        for how in sorted(lost, key=lambda how: how.order):
            # As kept now: deleted, taken or finished while those before it were queued, it is
            # not queued (alone, it would be answered unlooked); edited, it goes as edited.
            seen = (how.message.team, how.message.channel, how.message.ts)
            if (handed_on := self._handed_on.get(seen)) is not None:
                how = handed_on
            elif (message := self._waiting.get(seen)) is not None:
                how = replace(how, message=message)
            else:
                continue
            how = how.over(self._unqueued.get(seen))  # an earlier loss's refused queueing knew more
            if how.message.key in refused:
                # Behind one Redis refused: tried with it, in order, not answered before it.
                self._hold_back(how)
            elif not await self._queue(
                how.message, look_first=how.look_first, shown=how.shown, sign=how.sign
            ):
                refused.add(how.message.key)

    async def _queue_unqueued(self) -> None:
        """Queue again, in order, the messages whose queueing again Redis refused (at a beat:
        Redis answers again). Queued twice (the refusal was a lost reply), a message is a
        duplicate in Redis, and nothing is done."""
        refused: set[ThreadKey] = set()
        try:
            for seen, how in sorted(self._unqueued.items(), key=lambda item: item[1].order):
                if self._unqueued.get(seen) is not how:
                    continue  # taken or finished meanwhile, or queued by a loss's queueing again
                if how.message.key in refused:
                    continue  # behind one refused again: kept for the next beat, in order
                message = self._waiting.get(seen, how.message)  # as edited since
                if not await self._queue(message, look_first=how.look_first, shown=how.shown, sign=how.sign):
                    refused.add(message.key)
            if refused:
                log.warning("messages still not queued again, tried again at the next beat "
                            "count=%d threads=%d", len(self._unqueued), len(refused))  # fmt: skip
        finally:
            self._retrying = False

    async def hand_on(
        self, message: IncomingMessage, shown: str | None = None, sign: str | None = None
    ) -> None:
        """A turn here stands down for the worker that holds its thread's lock now, which answers
        the message from the inbox. After Redis lost its data the inbox may not have it (that
        worker took the lock, free since the loss, for a message accepted after it): queued
        again, to be looked up in Slack first. Known to Redis, as it is but after a loss, it is a
        duplicate, and nothing is done.

        `shown`: the answer's first message, which showed here (the journal that said so may
        have gone with the loss): queued again with it, the turn is resumed as after a crash
        (the message closed, and a note that the answer was interrupted), not answered again
        below it. The look in Slack would not find it: the bot's last message there is the
        answer of the worker that took the thread over. `sign`: the thinking sign shown then
        (its journal said so too), which the resumed turn takes away: on a DM's top level, a
        reaction that would stay up for good."""
        how = self._let_go(_Requeue(message, True, shown, sign))
        await self._queue(message, look_first=True, shown=how.shown, sign=how.sign)

    async def deferred(
        self, message: IncomingMessage, shown: str | None = None, sign: str | None = None
    ) -> None:
        """A turn here produced the answer but Slack would not take it (or may have, unseen): the
        message stays in its inbox, the answer in its journal, for recovery to retry. Both go if
        Redis loses its data: kept here until a worker here takes it again or a beat finds it over,
        to be queued again then, looked up in Slack first (the post may have landed). `shown`: the
        answer's first message, when it showed before the rest was refused (a long answer): queued
        again with it, the turn is resumed as after a crash, as when handed on (`hand_on`): the
        look would not find it under a newer answer. `sign`: the thinking sign left up for the
        retry, which its turn then takes away.

        Queued again at once too: Redis still knowing it, a duplicate, and nothing is done; but a
        loss may have taken its inbox already, and been acted on while the answer was written,
        leaving nothing to retry it. Its thread is pending again, for recovery's next round (no
        worker is started for it: Slack has just refused the answer)."""
        how = self._let_go(_Requeue(message, True, shown, sign))
        await self._queue(message, look_first=True, shown=how.shown, sign=how.sign, start=False)

    def _let_go(self, how: _Requeue) -> _Requeue:
        """Keep a message a turn here let go of (`hand_on`, `deferred`), with what was known of it
        already (see `_Requeue.over`); returns what is kept."""
        seen = (how.message.team, how.message.channel, how.message.ts)
        kept = self._handed_on[seen] = how.over(self._handed_on.get(seen))
        self._handed_on.move_to_end(seen)
        while len(self._handed_on) > WAITING_MEMORY:
            self._handed_on.popitem(last=False)
        return kept

    async def _queue(
        self,
        message: IncomingMessage,
        *,
        look_first: bool,
        shown: str | None = None,
        sign: str | None = None,
        start: bool = True,
    ) -> bool:
        """Queue a message again; False when Redis refused it (it is tried again at the next
        beat). `start`: a worker here takes its thread at once (else recovery's next round)."""
        where = (message.team, message.channel, message.conversation, message.user)
        try:
            lost = self.dm_history_lost(message.key)
            accepted, _ = await self.store.accept(
                message, look_first=look_first, earlier_lost=lost, answer_ts=shown, sign=sign
            )
        except StoreUnavailable as error:
            # A WARNING the first time; a retry refused again is counted in one line a round.
            again = (message.team, message.channel, message.ts) in self._unqueued
            log.log(logging.DEBUG if again else logging.WARNING, "message not queued again, tried "
                    "again at the next beat team=%s channel=%s thread=%s user=%s error=%s",
                    *where, error)  # fmt: skip
            self._hold_back(_Requeue(message, look_first, shown, sign))
            return False
        self._unqueued.pop((message.team, message.channel, message.ts), None)
        if accepted is not Accepted.DUPLICATE:
            log.info("message queued again team=%s channel=%s thread=%s user=%s look_first=%s",
                     *where, look_first)  # fmt: skip
            if start:
                self._start_work(message.key)
        return True

    def _hold_back(self, how: _Requeue) -> None:
        """Tried again at the next beat that finds Redis remembering, with what an earlier refusal
        knew of it too (a look first, say, for a loss seen with other processes alive)."""
        seen = (how.message.team, how.message.channel, how.message.ts)
        self._unqueued[seen] = how.over(self._unqueued.get(seen))
        while len(self._unqueued) > WAITING_MEMORY:
            self._unqueued.popitem(last=False)

    # -- a message queued again, looked up -------------------------------------------------

    async def look_in_slack(
        self, message: IncomingMessage
    ) -> IncomingMessage | Progress | CutShort | Deleted:
        """A message queued again while other processes were alive: one of them may have answered
        it, or been told it was deleted, before the loss. Slack says (one read, under the
        thread's lock, so after any turn on it elsewhere): the outcome when there is nothing to
        answer; the answer cut short; else the message, as it reads now.

        When Slack cannot be asked, even after a generous wait, it is answered all the same: a
        person's question lost is worse than a rare second answer, or (rarer still: a deletion
        that reached another process while the message waited) a deleted message's text sent to
        the model. A message known deleted is never answered."""
        where = (message.team, message.channel, message.conversation, message.user)
        wait = LOOK_WAIT_SECONDS / self.delivery.budget.scale
        found = await self.delivery.look_at_question(target_for(message), message.bot_user_id, wait=wait)
        if found is None:
            log.warning(
                "could not look in slack before answering a message queued again, answering it "
                "(maybe twice) team=%s channel=%s thread=%s user=%s",
                *where,
            )
            return message
        if not found.there:
            log.info("message queued again was deleted meanwhile, not answered team=%s channel=%s "
                     "thread=%s user=%s", *where)  # fmt: skip
            return Deleted()
        if found.noticed:
            log.info("notice found posted already team=%s channel=%s thread=%s user=%s", *where)
            # The answer given up for it may stream still (see `TurnRunner._resume`): closed.
            for ts in found.begun:
                await self.delivery.end_abandoned(target_for(message), ts)
            return Progress.of(state="noted")
        if found.text is not None:
            message = replace(message, text=found.text)  # as edited, maybe through another process
        answer = found.answer if message.action == "answer" else None
        if answer is None:
            return message
        known = await self.store.stored_ts(message.key)
        if not answer.complete and answer.ts in known:
            return message  # an earlier turn's answer, stopped by a person (see `TurnRunner._resume`)
        if not answer.complete:
            log.info("answer found cut short team=%s channel=%s thread=%s user=%s", *where)
            return CutShort(answer.ts)
        log.info("answer found posted already team=%s channel=%s thread=%s user=%s", *where)
        said = await self.workspace.user_turn(message)
        stored = Turn(
            role="assistant", text=answer.text, ts=answer.ts, reply_to=message.ts, messages=answer.messages
        )
        # A newer turn may have read both back from Slack already (`_read_earlier_thread`).
        turns = tuple(turn for turn in (said, stored) if turn.ts not in known)
        return Progress.of(turns=turns, user_turn_stored=1, state="answered", answer_ts=answer.ts)
