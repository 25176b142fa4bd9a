"""One turn: a user's message in, one outcome out (an answer, or a clear message saying what failed).

A message is first accepted into its thread's inbox in Redis (deduplicated there, so a message
delivered twice, or to two processes, is queued once). Whoever holds the thread's lock then works
through the inbox oldest first, so two quick messages in one thread are answered in order and the
second answer sees the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.context import ContextBuilder
from bot.delivery import Delivery, Target
from bot.llm import Answer, ChatModel, LLMError
from bot.store import IncomingMessage, Keys, Store, StoreUnavailable, ThreadKey, Turn
from bot.workspace import Workspace

log = logging.getLogger(__name__)

RESET_CONFIRMATION = "Starting fresh: I've cleared this conversation."
DELIVERY_FAILED = "Sorry, something went wrong while posting my answer. Please ask again."
STORE_UNAVAILABLE = (
    "Sorry, I'm temporarily unavailable (my memory store is down). Please try again in a minute."
)
TURN_FAILED = "Sorry, something went wrong on my side while answering this. Please ask again."
FORGOTTEN = (
    "Done: I've deleted what I stored about you in this workspace: {messages} stored message(s) "
    "(yours and my answers to them) from {conversations} conversation(s), {records} feedback "
    "record(s), and your cached name. Messages in Slack itself are not affected."
)
# How far back the DM's rolling conversation is searched for the question a DM thread starts from.
DM_LOOKBACK_TURNS = 60


class TurnRunner:
    def __init__(
        self,
        *,
        store: Store,
        workspace: Workspace,
        delivery: Delivery,
        model: ChatModel,
        context: ContextBuilder,
        max_concurrent_turns: int,
    ) -> None:
        self.store = store
        self.workspace = workspace
        self.delivery = delivery
        self.model = model
        self.context = context
        self._llm_slots = asyncio.Semaphore(max_concurrent_turns)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- entry points ----------------------------------------------------------------------

    async def accept(self, message: IncomingMessage) -> None:
        """Queue a message (once, however often Slack delivers it) and start working on its thread."""
        try:
            accepted = await self.store.accept(message)
        except StoreUnavailable as error:
            log.error(
                "redis unavailable, message not queued team=%s channel=%s thread=%s user=%s error=%s",
                *_where(message),
                error,
            )
            if message.action != "record":
                target = Target(message.channel, message.reply_thread_ts, message.ts)
                await self.delivery.post_notice(target, STORE_UNAVAILABLE)
            return
        if not accepted:
            log.info(
                "duplicate delivery ignored team=%s channel=%s ts=%s",
                message.team,
                message.channel,
                message.ts,
            )
            return
        self._spawn(self.work_through(message.key))

    async def remove_message(self, key: ThreadKey, ts: str) -> None:
        if await self.store.remove_user_message(key, ts):
            log.info("deleted message removed team=%s channel=%s ts=%s", key.team, key.channel, ts)

    async def edit_message(self, key: ThreadKey, ts: str, text: str, bot_user_id: str) -> None:
        readable = await self.workspace.readable(key.team, text, bot_user_id)
        await self.store.edit_user_message(key, ts, readable)

    async def drain(self, grace_seconds: float) -> None:
        """Wait (up to `grace_seconds`) for turns in flight; used on shutdown and in tests."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- the thread's inbox ----------------------------------------------------------------

    async def work_through(self, key: ThreadKey) -> None:
        """Answer the thread's queued messages in order while holding its lock."""
        while True:
            token = uuid.uuid4().hex
            if not await self.store.acquire_lock(key, token):
                return  # the holder (here or in another process) will reach our message
            renewer = asyncio.create_task(self._keep_lock(key, token))
            try:
                while (message := await self.store.next_in_inbox(key)) is not None:
                    await self._take_turn_safely(message)
                    await self.store.finish_inbox_head(key)
            finally:
                renewer.cancel()
                await self.store.release_lock(key, token)
            # A message queued between our last look and the release found the lock still held.
            if await self.store.inbox_size(key) == 0:
                return

    async def _keep_lock(self, key: ThreadKey, token: str) -> None:
        while True:
            await asyncio.sleep(Keys.LOCK_TTL_MS / 3000)
            if not await self.store.renew_lock(key, token):
                log.warning("thread lock lost thread=%s", key)
                return

    # -- one turn --------------------------------------------------------------------------

    async def _take_turn_safely(self, message: IncomingMessage) -> None:
        """A turn that fails in an unforeseen way still ends with a message, never silence."""
        try:
            await self._take_turn(message)
        except Exception as error:
            log.exception(
                "turn failed team=%s channel=%s thread=%s user=%s error=%s",
                *_where(message),
                type(error).__name__,
            )
            target = Target(message.channel, message.reply_thread_ts, message.ts)
            await self.delivery.post_notice(target, TURN_FAILED)

    async def _take_turn(self, message: IncomingMessage) -> None:
        target = Target(message.channel, message.reply_thread_ts, message.ts)
        if message.action == "reset":
            await self.store.reset(message.key)
            await self.delivery.post_notice(target, RESET_CONFIRMATION)
            log.info("turn team=%s channel=%s thread=%s user=%s outcome=reset", *_where(message))
            return
        if message.action == "forget":
            forgotten = await self.store.forget_user(message.team, message.user)
            await self.delivery.post_notice(target, FORGOTTEN.format(**asdict(forgotten)))
            log.info(
                "turn team=%s channel=%s thread=%s user=%s outcome=forgotten messages=%d conversations=%d",
                *_where(message),
                forgotten.messages,
                forgotten.conversations,
            )
            return
        if message.action == "record":
            await self.store.append_turns(message.key, await self._user_turn(message))
            return
        await self._answer(message, target)

    async def _answer(self, message: IncomingMessage, target: Target) -> None:
        started = time.monotonic()
        sign = await self.delivery.show_thinking(target)
        answer: Answer | None = None
        outcome = "answered"
        answered = False
        try:
            await self._read_earlier_thread(message)
            await self.store.append_turns(message.key, await self._user_turn(message))
            prompt = await self.context.prompt_for(message.key)
            async with self._llm_slots:
                answer = await self.model.answer(prompt.messages)
            posted = await self.delivery.post_answer(target, answer.text)
            answered = True
            await self.store.append_turns(
                message.key, Turn(role="assistant", text=answer.text, ts=posted[0], reply_to=message.ts)
            )
            if prompt.needs_summary:
                # In the background: the answer is already out, and nothing waits for this.
                self._spawn(self.context.summarise(message.key))
        except LLMError as error:
            outcome = f"llm_error:{error.kind}"
            answered = await self.delivery.post_notice(target, error.user_message) is not None
        except SlackApiError as error:
            outcome = f"slack_error:{error.response.get('error')}"
            answered = await self.delivery.post_notice(target, DELIVERY_FAILED) is not None
        finally:
            await self.delivery.clear_thinking(sign, answered=answered)
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

    async def _read_earlier_thread(self, message: IncomingMessage) -> None:
        """A mention inside a thread the bot was not part of: read what came before, once."""
        key = message.key
        if message.starts_conversation or await self.store.is_hydrated(key):
            return
        try:
            earlier = await self.workspace.earlier_thread_turns(
                key, key.thread, message.ts, message.bot_user_id
            )
        except SlackApiError as error:
            # Answer without the earlier messages rather than not at all; try again next turn.
            log.warning("could not read earlier thread thread=%s error=%s", key, error.response.get("error"))
            return
        if message.is_dm:
            earlier = await self._question_before(message, earlier) + earlier
        known = await self.store.stored_ts(key)
        await self.store.prepend_history(key, [t for t in earlier if t.ts not in known])

    async def _question_before(self, message: IncomingMessage, thread: list[Turn]) -> list[Turn]:
        """A DM thread under one of the bot's answers starts with the question that answer was for."""
        if not thread or thread[0].role != "assistant":
            return []
        dm = ThreadKey(message.team, message.channel, "dm")
        rolling = await self.store.recent_turns(dm, DM_LOOKBACK_TURNS)
        at = next((i for i, turn in enumerate(rolling) if turn.ts == thread[0].ts), None)
        if at is None or at == 0 or rolling[at - 1].role != "user":
            return []
        return [rolling[at - 1]]

    async def _user_turn(self, message: IncomingMessage) -> Turn:
        name = await self.workspace.display_name(message.team, message.user)
        text = await self.workspace.readable(message.team, message.text, message.bot_user_id)
        return Turn(role="user", text=text, ts=message.ts, user=message.user, name=name)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("turn crashed error=%s", type(error).__name__, exc_info=error)


def _where(message: IncomingMessage) -> tuple[str, str, str, str]:
    return message.team, message.channel, message.conversation, message.user
