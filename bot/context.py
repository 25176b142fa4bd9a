"""What the model sees: the system prompt (with the rolling summary of older turns and who is asking
now), then as many of the newest turns as fit the token budget, each attributed to its author."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bot.llm import ChatMessage
from bot.store import Store, ThreadKey, Turn
from bot.tokens import PER_MESSAGE, REPLY_PRIMING, TokenBudget, TokenCounter

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


def author(turn: Turn) -> str:
    if turn.role == "assistant":
        return "assistant"
    return turn.name or turn.user or "someone"


def system_message(system_prompt: str, summary: str | None, asker: str | None) -> ChatMessage:
    # One system message: several, or one not at the start, break some servers' chat templates.
    parts = [system_prompt]
    if summary:
        parts.append(f"{SUMMARY_HEADING}\n{summary}")
    if asker:
        parts.append(f"You are answering {asker}, who wrote the last message.")
    return {"role": "system", "content": "\n\n".join(parts)}


def ts_order(ts: str) -> Decimal:
    """Slack timestamps in time order (string order breaks on odd ones, float on microseconds)."""
    try:
        return Decimal(ts)
    except InvalidOperation:
        return Decimal(0)


class TailReader:
    """A conversation's turns, newest first, read from the store in growing pages."""

    def __init__(self, store: Store, key: ThreadKey) -> None:
        self.store = store
        self.key = key
        self.read = 0
        self._page: list[Turn] = []
        self._size = FIRST_PAGE
        self._at_start = False

    async def next(self) -> Turn | None:
        if not self._page:
            if self._at_start:
                return None
            page = await self.store.tail(self.key, self.read, self._size)
            self.read += len(page)
            self._at_start = len(page) < self._size
            self._size = min(self._size * 2, LARGEST_PAGE)
            self._page = page
            if not page:
                return None
        return self._page.pop()


class ContextBuilder:
    """Builds the prompt for a conversation from what the store holds, within the token budget."""

    def __init__(
        self, store: Store, system_prompt: str, *, counter: TokenCounter, budget: TokenBudget
    ) -> None:
        self.store = store
        self.system_prompt = system_prompt
        self.counter = counter
        self.budget = budget

    async def prompt_for(self, key: ThreadKey) -> Prompt:
        """System prompt, summary, and the newest turns that fit; the newest turn (the question
        being answered) is always in, cut to fit if it alone is too long."""
        summary = await self.store.summary(key)
        covered = ts_order(summary.upto) if summary.upto else None
        tail = TailReader(self.store, key)
        newest = await tail.next()
        asker = author(newest) if newest is not None and newest.role == "user" else None
        summary_text = self.counter.truncate(summary.text, self.budget.summary) if summary.text else None
        system = system_message(self.system_prompt, summary_text, asker)
        room = self.budget.prompt - REPLY_PRIMING - self.counter.count_message(system)
        picked: list[ChatMessage] = []
        used = 0
        overflow = False
        turn = newest
        while turn is not None:
            if covered is not None and ts_order(turn.ts) <= covered:
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
