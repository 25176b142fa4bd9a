"""What the bot reads from Slack: people's display names (cached in Redis) and the earlier messages
of a thread, or of a DM after Redis lost its data.

These reads draw on Slack's shared rate budget and never hold an answer up for long: a name Slack
cannot give now is the person's id this turn, and earlier messages Slack will not show now are
answered without (read again on the next turn).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from decimal import Decimal
from typing import Any

from bot.lost_answers import block_ids, first_message_named, ts_number
from bot.rate_limit import CALL_ERRORS, BudgetedSlack, error_code
from bot.slack_text import is_command, mentioned_users, to_plain_text
from bot.store import IncomingMessage, Store, ThreadKey, Turn
from bot.streaming import ANSWER_BLOCK_PREFIX, is_notice_block

log = logging.getLogger(__name__)

REPLIES_PAGE = 200
# users.info is Tier 4 (100 a minute per workspace). A burst from more people new to the bot than
# that answers the rest under their ids rather than wait up to a minute for a name.
NAME_WAIT_SECONDS = 0.0
# conversations.replies is Tier 3 (50 a minute): a thread's earlier messages are worth a short wait
# for the first page. A long thread, once begun, is read to its end, each later page waiting for a
# slot as long as the budget's window: stopping short would leave it to be read again, from its
# start, on the next turn.
EARLIER_THREAD_WAIT_SECONDS = 5.0
# After these commands nothing earlier of the conversation is kept (see bot/turn.py).
FRESH_START_COMMANDS = ("reset", "forget me")
# Slack's answers for a person it will not name (deleted, or not visible to the bot, as some
# people of other organizations in shared channels): their id stands in for a while.
NO_NAME_ERRORS = frozenset({"user_not_found", "user_not_visible"})
# Names are also kept in this process for a while, which saves a Redis read on every turn. A
# renamed person shows under the old name in new turns until it expires.
NAME_MEMORY_SECONDS = 600
NAME_MEMORY_SIZE = 10_000


class Workspace:
    def __init__(self, slack: BudgetedSlack, store: Store) -> None:
        self.slack = slack
        self.store = store
        self._names: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._lookups: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def display_name(self, team: str, user: str) -> str:
        """A person's Slack display name, looked up once and cached; their id if Slack won't say."""
        lookup = self._lookup(team, user)
        return lookup if isinstance(lookup, str) else await asyncio.shield(lookup)

    def look_up_soon(self, team: str, user: str) -> None:
        """Start looking up a person's name without waiting for it: done while their message is
        being queued, it is ready when the turn needs it (in a burst of questions, a lookup started
        then goes out ahead of the hundreds of thinking statuses that follow)."""
        self._lookup(team, user)

    def _lookup(self, team: str, user: str) -> str | asyncio.Future[str]:
        """The name if remembered, else the lookup under way (many questions from one person at
        once share one)."""
        remembered = self._names.get((team, user))
        if remembered is not None and remembered[1] > time.monotonic():
            return remembered[0]
        lookup = self._lookups.get((team, user))
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(team, user))
            self._lookups[(team, user)] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(team, user, done))
        return lookup

    async def _look_up(self, team: str, user: str) -> str:
        cached = await self.store.cached_name(team, user)
        if cached:
            self._remember(team, user, cached)
            return cached
        try:
            response = await self.slack.call(
                "users.info", team=team, wait=NAME_WAIT_SECONDS, http_verb="GET", user=user
            )
        except CALL_ERRORS as error:
            code = error_code(error)
            log.info("name not looked up user=%s reason=%s", user, code)
            if code in NO_NAME_ERRORS:
                self._remember(team, user, user)  # asking again soon would get the same answer
            # Otherwise not remembered: the next turn asks again.
            return user
        person = response.get("user") or {}
        profile = person.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or person.get("real_name")
            or person.get("name")
            or user
        )
        await self.store.cache_name(team, user, name)
        self._remember(team, user, name)
        return name

    def _looked_up(self, team: str, user: str, done: asyncio.Future[str]) -> None:
        self._lookups.pop((team, user), None)
        if not done.cancelled():
            done.exception()  # seen here: the callers that were waiting get it themselves

    def forget_name(self, team: str, user: str) -> None:
        """`forget me`: this process's copy goes with the stored one."""
        self._names.pop((team, user), None)

    def _remember(self, team: str, user: str, name: str) -> None:
        self._names[(team, user)] = (name, time.monotonic() + NAME_MEMORY_SECONDS)
        self._names.move_to_end((team, user))
        while len(self._names) > NAME_MEMORY_SIZE:
            self._names.popitem(last=False)

    async def readable(self, team: str, text: str, bot_user_id: str) -> str:
        """A Slack message's text as the model should read it, people's mentions as their names."""
        people = mentioned_users(text) - {bot_user_id}
        names = {user: await self.display_name(team, user) for user in people}
        return to_plain_text(text, bot_user_id, names)

    async def user_turn(self, message: IncomingMessage) -> Turn:
        """A person's message as the conversation stores it: readable text, and who said it."""
        name = await self.display_name(message.team, message.user)
        text = await self.readable(message.team, message.text, message.bot_user_id)
        return Turn(role="user", text=text, ts=message.ts, user=message.user, name=name)

    async def earlier_thread_turns(
        self, key: ThreadKey, thread_ts: str, before_ts: str, bot_user_id: str, *, is_dm: bool = False
    ) -> list[Turn]:
        """The thread's messages before `before_ts`, read once from Slack (all pages); `is_dm`:
        a DM's thread, where every message is said to the bot. Raises one of `CALL_ERRORS` when
        Slack cannot show them now."""
        before = ts_number(before_ts)
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        window = self.slack.budget.bucket(key.team, "conversations.replies").window_ms / 1000
        while True:
            response = await self.slack.call(
                "conversations.replies",
                team=key.team,
                wait=window if cursor else EARLIER_THREAD_WAIT_SECONDS,
                http_verb="GET",
                channel=key.channel,
                ts=thread_ts,
                limit=REPLIES_PAGE,
                cursor=cursor,
            )
            found += [m for m in _messages(response) if _before(m, before)]
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not response.get("has_more") or not cursor:
                break
        return await self._as_turns(key.team, found, bot_user_id, said_to_bot=is_dm)

    async def earlier_dm_turns(
        self, key: ThreadKey, before_ts: str, bot_user_id: str, limit: int
    ) -> list[Turn]:
        """The DM's newest `limit` top-level messages before `before_ts` (one read, oldest first),
        none older than the stored conversations' lifetime: the store would not hold those either.
        Raises one of `CALL_ERRORS` when Slack cannot show them now."""
        response = await self.slack.call(
            "conversations.history",
            team=key.team,
            wait=EARLIER_THREAD_WAIT_SECONDS,
            http_verb="GET",
            channel=key.channel,
            latest=before_ts,
            oldest=f"{time.time() - self.store.conversation_ttl:.6f}",
            limit=limit,
        )
        newest_first = _messages(response)
        return await self._as_turns(key.team, newest_first[::-1], bot_user_id, said_to_bot=True)

    async def _as_turns(
        self, team: str, messages: list[dict[str, Any]], bot_user_id: str, *, said_to_bot: bool = False
    ) -> list[Turn]:
        """Messages (oldest first) as the stored conversation would hold them: nothing from before
        a person's last `reset`, nothing a person said before their `forget me` nor the bot's
        answers to it (everyone else's part stays, as in the store), no notices (the bot's
        errors and confirmations never join a conversation), and each of the bot's answers linked
        to its question (`Turn.reply_to`). `said_to_bot`: every message is (a DM), so a bare
        command counts from the start."""
        fresh, bot_was_here = 0, said_to_bot
        forgotten: set[int] = set()  # messages of people who said `forget me` later, and answers
        asked: list[tuple[str, int]] = []  # (sender, index) of each person's message
        answer_to: dict[int, int] = {}  # a bot message's index: the index of its question
        for i, message in enumerate(messages):
            command = _command(message, bot_user_id, bot_was_here)
            if command == "reset":
                fresh = i + 1
            elif command == "forget me":
                sender = message.get("user")
                theirs = {j for who, j in asked if who == sender} | {i}
                forgotten |= theirs | {j for j, q in answer_to.items() if q in theirs}
            elif message.get("user") == bot_user_id:
                question = _question_of(i, messages, asked, bot_user_id)
                if question is not None:
                    answer_to[i] = question
                    # An answer written while the reset or forget me after its question came
                    # in: posted after it, but stored before it, and gone with the rest.
                    if question < fresh or question in forgotten:
                        forgotten.add(i)
            elif isinstance(message.get("user"), str):
                asked.append((message["user"], i))
            bot_was_here = bot_was_here or message.get("user") == bot_user_id
        turns: list[Turn] = []
        for i, message in enumerate(messages[fresh:], start=fresh):
            if i not in forgotten and not any(map(is_notice_block, block_ids(message))):
                # Linked as the bot's own answers are, so that `forget me` and a deletion of the
                # question take the answer too. One with no question before it stays unlinked.
                question = messages[answer_to[i]].get("ts") if i in answer_to else None
                turn = await self._as_turn(team, message, bot_user_id, question)
                if turn is not None:
                    turns.append(turn)
        return turns

    async def _as_turn(
        self, team: str, message: dict, bot_user_id: str, question: str | None = None
    ) -> Turn | None:
        """`question`: the ts of the person's message a bot message answers."""
        text = message.get("text") or ""
        ts = message.get("ts")
        if not ts or not text.strip() or message.get("subtype") in ("channel_join", "channel_leave"):
            return None
        if message.get("user") == bot_user_id:
            return Turn(role="assistant", text=text, ts=ts, reply_to=question)
        if message.get("bot_id") and not message.get("user"):
            name = (message.get("bot_profile") or {}).get("name") or message.get("username") or "bot"
            return Turn(role="user", text=text, ts=ts, name=name)
        user = message.get("user")
        if not user:
            return None
        name = await self.display_name(team, user)
        readable = await self.readable(team, text, bot_user_id)
        edit = message.get("edited")
        shown = edit.get("ts") if isinstance(edit, dict) else None  # its newest edit's
        edited = shown if isinstance(shown, str) else None
        return Turn(role="user", text=readable, ts=ts, user=user, name=name, edited=edited)


def _messages(response: Any) -> list[dict[str, Any]]:
    return [m for m in response.get("messages") or [] if isinstance(m, dict)]


def _before(message: dict[str, Any], ts: Decimal | None) -> bool:
    found = ts_number(message.get("ts"))
    return found is not None and ts is not None and found < ts


def _command(message: dict[str, Any], bot_user_id: str, bot_was_here: bool) -> str | None:
    """A person's `reset` or `forget me`, said to the bot: with its mention, or once it had
    spoken in the conversation (in a thread it was not in, a bare "reset" was someone else's)."""
    text = str(message.get("text") or "")
    if message.get("user") == bot_user_id or not (bot_was_here or f"<@{bot_user_id}" in text):
        return None
    return next((c for c in FRESH_START_COMMANDS if is_command(text, bot_user_id, c)), None)


def _question_of(
    at: int, messages: list[dict[str, Any]], asked: list[tuple[str, int]], bot_user_id: str
) -> int | None:
    """The index of the person's message the bot message at `at` answers: the one its buttons
    name, or those of the answer's last message when it is an earlier part of a long answer
    (the last part's buttons name its first, as `Delivery.find_answer` reads them); else the
    latest before it (a thread's turns run one after another); None when there is none here
    (the bot began the thread, or its question is older than what was read)."""
    named = _named_question(messages[at])
    if named is None:
        named = _question_of_whole_answer(at, messages, bot_user_id)
    if named is not None:
        return next((j for _, j in asked if messages[j].get("ts") == named), None)
    return asked[-1][1] if asked else None


def _named_question(message: dict[str, Any]) -> str | None:
    """The ts of the question an answer's buttons name, or None for a message without them."""
    for block_id in block_ids(message):
        if block_id.startswith(ANSWER_BLOCK_PREFIX):
            return block_id[len(ANSWER_BLOCK_PREFIX) :]
    return None


def _question_of_whole_answer(at: int, messages: list[dict[str, Any]], bot_user_id: str) -> str | None:
    """For a bot message without buttons: the question of the answer it is an earlier part of,
    found on the bot's next message that ends a reply, if that one's buttons name a first
    message at or before it."""
    ts = ts_number(messages[at].get("ts"))
    for later in messages[at + 1 :]:
        ids = block_ids(later)
        if later.get("user") != bot_user_id or not any(
            is_notice_block(i) or i.startswith(ANSWER_BLOCK_PREFIX) for i in ids
        ):
            continue
        question, first = _named_question(later), ts_number(first_message_named(later))
        if question is None or ts is None or first is None or first > ts:
            return None
        return question
    return None
