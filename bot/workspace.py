"""What the bot reads from Slack: people's display names (cached in Redis) and earlier thread messages."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack_text import mentioned_users, to_plain_text
from bot.store import Store, ThreadKey, Turn

log = logging.getLogger(__name__)

REPLIES_PAGE = 200


class Workspace:
    def __init__(self, client: AsyncWebClient, store: Store) -> None:
        self.client = client
        self.store = store

    async def display_name(self, team: str, user: str) -> str:
        """A person's Slack display name, looked up once and cached; their id if Slack won't say."""
        cached = await self.store.cached_name(team, user)
        if cached:
            return cached
        try:
            response = await self.client.users_info(user=user)
        except SlackApiError as error:
            log.warning("users.info failed user=%s error=%s", user, error.response.get("error"))
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
        return name

    async def readable(self, team: str, text: str, bot_user_id: str) -> str:
        """A Slack message's text as the model should read it, people's mentions as their names."""
        people = mentioned_users(text) - {bot_user_id}
        names = {user: await self.display_name(team, user) for user in people}
        return to_plain_text(text, bot_user_id, names)

    async def earlier_thread_turns(
        self, key: ThreadKey, thread_ts: str, before_ts: str, bot_user_id: str
    ) -> list[Turn]:
        """The thread's messages before `before_ts`, read once from Slack (all pages)."""
        turns: list[Turn] = []
        cursor: str | None = None
        while True:
            response = await self.client.conversations_replies(
                channel=key.channel, ts=thread_ts, limit=REPLIES_PAGE, cursor=cursor
            )
            for message in response.get("messages") or []:
                turn = await self._as_turn(key.team, message, bot_user_id)
                if turn is not None and float(turn.ts) < float(before_ts):
                    turns.append(turn)
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not response.get("has_more") or not cursor:
                break
        return turns

    async def _as_turn(self, team: str, message: dict, bot_user_id: str) -> Turn | None:
        text = message.get("text") or ""
        ts = message.get("ts")
        if not ts or not text.strip() or message.get("subtype") in ("channel_join", "channel_leave"):
            return None
        if message.get("user") == bot_user_id:
            return Turn(role="assistant", text=text, ts=ts)
        if message.get("bot_id") and not message.get("user"):
            name = (message.get("bot_profile") or {}).get("name") or message.get("username") or "bot"
            return Turn(role="user", text=text, ts=ts, name=name)
        user = message.get("user")
        if not user:
            return None
        name = await self.display_name(team, user)
        readable = await self.readable(team, text, bot_user_id)
        return Turn(role="user", text=readable, ts=ts, user=user, name=name)
