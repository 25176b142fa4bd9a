"""What the model sees: the system prompt (with the rolling summary of older turns and who is asking
now), then as many of the newest turns as fit the token budget, each attributed to its author."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bot.llm import ChatMessage, ChatModel, LLMError
from bot.store import Store, SummaryState, ThreadKey, Turn
from bot.tokens import PER_MESSAGE, REPLY_PRIMING, TokenBudget, TokenCounter

log = logging.getLogger(__name__)

# Turns are read from the newest back in pages that double in size: a short thread costs one
# round trip, a long one a few, and never more than about twice the turns that fit.
FIRST_PAGE = 16
LARGEST_PAGE = 512

# A summary is due once the turns not yet summarised fill this share of the room for turns
# (so that nothing falls out of the prompt unsummarised), and folds the oldest of them into the
# summary until the rest fill no more than KEEP_SHARE: one summary per half a window of talk.
SUMMARISE_AT = 0.8
KEEP_SHARE = 0.5

SUMMARY_HEADING = "Summary of the earlier conversation (older messages are not shown):"
# When Slack would not show a thread's earlier messages (its read budget spent, an outage), or a
# DM's that Redis lost, the model is told, so that a follow-up such as "and the second one?" gets
# a question back, not a guess.
EARLIER_UNREAD_NOTE = (
    "The earlier messages of this Slack conversation could not be loaded just now, so only the latest "
    "are shown. If the question depends on what was said before, say that you cannot see the "
    "earlier messages and ask for what is missing instead of guessing."
)
# Summaries run in the background; this many at once per process leaves the model to answers.
SUMMARIES_AT_ONCE = 4

SUMMARY_INSTRUCTIONS = """\
You keep the running summary of a Slack support conversation between people and a support \
assistant. Rewrite the summary so far so that it also covers the new messages.
Keep every fact support may need later, word for word where it matters: product and feature \
names; account, workspace, project, check and monitor names; error codes and error messages; \
versions, IDs and URLs; what was already tried and what happened; what was decided; what is \
still open. Say who reported or asked what, by name.
Leave out greetings and small talk. Write short bullet points, at most {words} words in all.
Reply with the summary only."""


@dataclass(frozen=True)
class Prompt:
    """One request's messages, and what building them found."""

    messages: list[ChatMessage]
    tokens: int  # counted with the model's tokenizer, reply priming included
    turns: int  # turns included
    turns_read: int  # turns read from the store to build it
    needs_summary: bool  # older turns are (or are about to be) out of the window, unsummarised


def turn_message(turn: Turn) -> ChatMessage:
    """A stored turn as a chat message; a person's turn is prefixed with their name."""
    if turn.role == "assistant":
        return {"role": "assistant", "content": turn.text}
    return {"role": "user", "content": f"{author(turn)}: {turn.text}"}


NAME_LIMIT = 80  # characters of a person's name in the system message (Slack's own limit for one)


def author(turn: Turn) -> str:
    if turn.role == "assistant":
        return "assistant"
    return turn.name or turn.user or "someone"


def system_message(
    system_prompt: str, summary: str | None, asker: str | None, *, earlier_unread: bool = False
) -> ChatMessage:
    # One system message: several, or one not at the start, break some servers' chat templates.
    parts = [system_prompt]
    if summary:
        parts.append(f"{SUMMARY_HEADING}\n{summary}")
    if earlier_unread:
        parts.append(EARLIER_UNREAD_NOTE)
    if asker:
        parts.append(f"You are answering {quoted_name(asker)}, who wrote the last message.")
    return {"role": "system", "content": "\n\n".join(parts)}


def quoted_name(name: str) -> str:
    """A person's Slack name for the system message: anyone can set theirs to anything, so it goes
    in quoted, on one line and short, never passing for a line of the operator's instructions."""
    line = " ".join(name.split()).replace('"', "'")
    if len(line) > NAME_LIMIT:
        line = line[: NAME_LIMIT - 1] + "…"
    return f'"{line}"'


def ts_order(ts: str) -> Decimal:
    """Slack timestamps in time order (string order breaks on odd ones, float on microseconds)."""
    try:
        return Decimal(ts)
    except InvalidOperation:
        return Decimal(0)


def summarised(turn: Turn, upto: str | None) -> bool:
    """Whether `turn`, met reading the stored turns from the newest, is where the summary's turns
    begin: the summary's last turn itself. Turns are stored in the order they were answered, not
    by ts: a question sent while the answer before it was being written is older than that
    answer, yet stored after it, and not summarised when the summary ends at that answer. Should
    the summary's last turn be gone, an answer older than it ends the reading: answers are
    stored in the order they were posted."""
    if upto is None:
        return False
    if turn.ts == upto:
        return True
    return turn.role == "assistant" and ts_order(turn.ts) < ts_order(upto)


class TailReader:
    """A conversation's turns, newest first, read from the store in growing pages."""

    def __init__(self, store: Store, key: ThreadKey, first_page: list[Turn] | None = None) -> None:
        self.store = store
        self.key = key
        self.read = 0
        self._page: list[Turn] = []
        self._size = FIRST_PAGE
        self._at_start = False
        if first_page is not None:  # read already, along with something else
            self._take(first_page)

    def _take(self, page: list[Turn]) -> None:
        self.read += len(page)
        self._at_start = len(page) < self._size
        self._size = min(self._size * 2, LARGEST_PAGE)
        self._page = page

    async def next(self) -> Turn | None:
        if not self._page:
            if self._at_start:
                return None
            self._take(await self.store.tail(self.key, self.read, self._size))
            if not self._page:
                return None
        return self._page.pop()


class ContextBuilder:
    """Builds the prompt for a conversation from what the store holds, within the token budget."""

    def __init__(
        self,
        store: Store,
        system_prompt: str,
        *,
        counter: TokenCounter,
        budget: TokenBudget,
        model: ChatModel,
    ) -> None:
        self.store = store
        self.system_prompt = system_prompt
        self.counter = counter
        self.budget = budget
        self.model = model
        self._summaries = asyncio.Semaphore(SUMMARIES_AT_ONCE)
        self._turn_room = budget.turn_room(counter.count(system_prompt))

    async def prompt_for(
        self,
        key: ThreadKey,
        read: tuple[SummaryState, list[Turn]] | None = None,
        *,
        earlier_unread: bool = False,
        asked: Turn | None = None,
    ) -> Prompt:
        """System prompt, summary, and the newest turns that fit; the newest turn (the question
        being answered) is always in, cut to fit if it alone is too long. `read`: the summary and
        the newest FIRST_PAGE turns, when the caller read them already. `earlier_unread`: the
        thread has earlier messages Slack would not show now (the model is told). `asked`: the
        question being answered when the conversation does not store it (see bot/turn.py)."""
        summary, first_page = read or await self.store.summary_and_tail(key, FIRST_PAGE)
        tail = TailReader(self.store, key, first_page)
        newest = asked if asked is not None else await tail.next()
        asker = author(newest) if newest is not None and newest.role == "user" else None
        summary_text = self.counter.truncate(summary.text, self.budget.summary) if summary.text else None
        system = system_message(self.system_prompt, summary_text, asker, earlier_unread=earlier_unread)
        room = self.budget.prompt - REPLY_PRIMING - self.counter.count_message(system)
        picked: list[ChatMessage] = []
        used = 0
        overflow = False
        turn = newest
        while turn is not None:
            if summarised(turn, summary.upto):
                break  # this turn and all before it are in the summary
            message = turn_message(turn)
            cost = self.counter.count_message(message)
            if used + cost > room:
                if picked:
                    overflow = True
                    break
                content = self.counter.truncate(message["content"], room - PER_MESSAGE)
                message = {"role": message["role"], "content": content}
                cost = self.counter.count_message(message)
            picked.append(message)
            used += cost
            turn = await tail.next()
        picked.reverse()
        return Prompt(
            messages=[system, *picked],
            tokens=REPLY_PRIMING + self.counter.count_message(system) + used,
            turns=len(picked),
            turns_read=tail.read,
            needs_summary=overflow or used > SUMMARISE_AT * room,
        )

    # -- the rolling summary ---------------------------------------------------------------

    async def summarise(self, key: ThreadKey) -> None:
        """Fold the turns that fell (or are about to fall) out of the window into the rolling
        summary. Called in the background once an answer is out; one job per conversation at a
        time, across processes."""
        token = uuid.uuid4().hex
        if not await self.store.acquire_summary_lock(key, token):
            return  # a job for this conversation is running, here or in another process
        started = time.monotonic()
        try:
            async with self._summaries:
                folded = await self._fold(key, token)
        except LLMError as error:
            log.warning("summary failed thread=%s model=%s error=%s", key, self.model.model, error.kind)
            return
        finally:
            await self.store.release_summary_lock(key, token)
        if folded:
            log.info(
                "summary thread=%s turns_folded=%d latency_ms=%d",
                key,
                folded,
                (time.monotonic() - started) * 1000,
            )

    async def _fold(self, key: ThreadKey, token: str) -> int:
        state = await self.store.summary(key)
        pending = await self._unsummarised(key, state)
        fold = pending[: len(pending) - self._keep_count(pending)]
        folded = 0
        while fold:
            chunk, fold = self._next_chunk(state.text, fold)
            answer = await self.model.complete(
                self._summary_request(state.text, chunk), max_tokens=self.budget.summary
            )
            # Models overrun their limit now and then; what is kept must fit its place in prompts.
            summary = self.counter.truncate(answer.text, self.budget.summary)
            if not await self.store.save_summary(key, summary, chunk[-1].ts, state):
                break  # reset, edited or deleted meanwhile: the next answer schedules a fresh job
            state = SummaryState(summary, chunk[-1].ts, state.epoch)
            folded += len(chunk)
            await self.store.renew_summary_lock(key, token)
        return folded

    async def _unsummarised(self, key: ThreadKey, state: SummaryState) -> list[Turn]:
        """The turns after the summary's last one, oldest first: the window and what fell out."""
        tail = TailReader(self.store, key)
        found: list[Turn] = []
        while (turn := await tail.next()) is not None:
            if summarised(turn, state.upto):
                break
            found.append(turn)
        found.reverse()
        return found

    def _keep_count(self, pending: list[Turn]) -> int:
        """How many of the newest turns stay out of the summary: at least the last exchange, and
        as many as fill KEEP_SHARE of the room for turns."""
        kept, used = 0, 0
        for turn in reversed(pending):
            used += self.counter.count_message(turn_message(turn))
            if kept >= 2 and used > KEEP_SHARE * self._turn_room:
                break
            kept += 1
        return kept

    def _next_chunk(self, summary: str | None, turns: list[Turn]) -> tuple[list[Turn], list[Turn]]:
        """The oldest turns that fit one summary request (at least one), and the rest."""
        room = self._transcript_room(summary)
        used, count = 0, 0
        for turn in turns:
            used += self.counter.count(transcript_line(turn)) + 1
            if count and used > room:
                break
            count += 1
        return turns[:count], turns[count:]

    def _summary_request(self, summary: str | None, turns: list[Turn]) -> list[ChatMessage]:
        transcript = "\n".join(transcript_line(turn) for turn in turns)
        room = self._transcript_room(summary)
        return self._summary_messages(summary, self.counter.truncate(transcript, room))

    def _transcript_room(self, summary: str | None) -> int:
        """Tokens left for new turns in a summary request, the answer's reserve kept."""
        fixed = self.counter.count_messages(self._summary_messages(summary, ""))
        return max(PER_MESSAGE, self.budget.window - self.budget.summary - fixed)

    def _summary_messages(self, summary: str | None, transcript: str) -> list[ChatMessage]:
        words = self.budget.summary * 3 // 4
        previous = self.counter.truncate(summary, self.budget.summary) if summary else "(none yet)"
        return [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(words=words)},
            {
                "role": "user",
                "content": f"Summary so far:\n{previous}\n\nNew messages, oldest first:\n{transcript}",
            },
        ]


def transcript_line(turn: Turn) -> str:
    return f"{author(turn)}: {turn.text}"
