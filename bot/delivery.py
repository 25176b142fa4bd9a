"""How an answer reaches Slack: the "is thinking…" sign, the answer itself (split when long), notices.

Slack types stop here and in the listeners: the turn only says what to show, and where.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack_text import split_message

log = logging.getLogger(__name__)

THINKING_STATUS = "is thinking…"
THINKING_REACTION = "eyes"


@dataclass(frozen=True)
class Target:
    """Where one turn's answer goes."""

    channel: str
    thread_ts: str | None  # None: a top-level reply (a DM's rolling conversation)
    message_ts: str  # the user's message being answered


@dataclass
class ThinkingSign:
    target: Target
    kind: str  # "status", "reaction" or "none"


class Delivery:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def show_thinking(self, target: Target) -> ThinkingSign:
        """Show that the bot is working: a thread status where there is a thread, else a reaction."""
        if target.thread_ts is not None:
            try:
                await self.client.assistant_threads_setStatus(
                    channel_id=target.channel, thread_ts=target.thread_ts, status=THINKING_STATUS
                )
                return ThinkingSign(target, "status")
            except SlackApiError as error:
                _log_api_error("assistant.threads.setStatus", error)
        try:
            await self.client.reactions_add(
                channel=target.channel, timestamp=target.message_ts, name=THINKING_REACTION
            )
            return ThinkingSign(target, "reaction")
        except SlackApiError as error:
            if error.response.get("error") == "already_reacted":  # left by an interrupted turn
                return ThinkingSign(target, "reaction")
            _log_api_error("reactions.add", error)
            return ThinkingSign(target, "none")

    async def clear_thinking(self, sign: ThinkingSign, *, answered: bool) -> None:
        """Take the sign away. Slack clears a thread status itself when the bot replies there."""
        if sign.kind == "reaction" or (sign.kind == "status" and not answered):
            await self.clear_sign(sign.target, sign.kind)

    async def clear_sign(self, target: Target, kind: str) -> None:
        try:
            if kind == "status":
                await self.client.assistant_threads_setStatus(
                    channel_id=target.channel, thread_ts=target.thread_ts or "", status=""
                )
            elif kind == "reaction":
                await self.client.reactions_remove(
                    channel=target.channel, timestamp=target.message_ts, name=THINKING_REACTION
                )
        except SlackApiError as error:
            _log_api_error("clear thinking sign", error)

    async def post_answer(self, target: Target, text: str) -> list[str]:
        """Post the answer, split into several messages when long. Returns their ts in order."""
        posted: list[str] = []
        for part in split_message(text):
            response = await self.client.chat_postMessage(
                channel=target.channel,
                thread_ts=target.thread_ts,
                text=part,
                unfurl_links=False,
                unfurl_media=False,
            )
            posted.append(response["ts"])
        return posted

    async def post_notice(self, target: Target, text: str) -> str | None:
        """A short message from the bot itself (an error, a confirmation). Never raises."""
        try:
            response = await self.client.chat_postMessage(
                channel=target.channel, thread_ts=target.thread_ts, text=text
            )
            return response["ts"]
        except SlackApiError as error:
            _log_api_error("chat.postMessage", error)
            return None


def _log_api_error(method: str, error: SlackApiError) -> None:
    log.warning("slack call failed method=%s error=%s", method, error.response.get("error"))
