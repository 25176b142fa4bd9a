"""Message events: mentions, DMs and thread follow-ups become turns; edits and deletions update
the stored conversation; everything else (joins, bot messages, our own messages) is ignored."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from bot.events import CHANGE_SUBTYPES, NEW_MESSAGE_SUBTYPES, MessageListeners
from bot.listeners.fields import an_object, is_slack_ts
from bot.slack_text import is_command, mentions_others
from bot.store import Action, IncomingMessage, ThreadKey
from bot.turn import TurnRunner

log = logging.getLogger(__name__)


def register(app: AsyncApp, turns: TurnRunner) -> MessageListeners:
    """Register the listeners with Bolt; returns those for a person's new, edited or deleted
    message, which bot/events.py also calls directly, without Bolt's dispatch."""

    async def on_app_mention(event: dict[str, Any], context: AsyncBoltContext) -> None:
        await on_new_message(event, context.team_id, context.bot_user_id or "", False)

    async def on_message(event: dict[str, Any], context: AsyncBoltContext) -> None:
        subtype = event.get("subtype")
        if subtype is not None and not isinstance(subtype, str):
            return
        if subtype in CHANGE_SUBTYPES:
            await on_change(event, context.team_id, context.bot_user_id or "")
        elif subtype is None or subtype in NEW_MESSAGE_SUBTYPES:
            is_dm = event.get("channel_type") == "im"
            await on_new_message(event, context.team_id, context.bot_user_id or "", is_dm)

    async def on_other_event(event: dict[str, Any]) -> None:
        # Acknowledged so that Slack does not retry it; nothing to do.
        log.debug("event ignored type=%s", event.get("type"))

    async def on_new_message(event: dict[str, Any], team: str | None, bot_user_id: str, is_dm: bool) -> None:
        # Known before the first await: the thread's worker then waits for this message.
        with turns.taking_in(_thread_of(event, team, is_dm=is_dm)):
            message = await _incoming(event, team, bot_user_id, is_dm=is_dm, turns=turns)
            if message is not None:
                # A mention made by an edit (Slack's app_mention of an edited message) was written
                # at the edit's ts, not the message's.
                edited = an_object(event.get("edited")).get("ts")
                await turns.accept(message, written=edited if is_slack_ts(edited) else None)

    async def on_change(event: dict[str, Any], team: str | None, bot_user_id: str) -> None:
        # Counted as an event being taken in: a stop waits for it as for a new message.
        with turns.taking_in():
            if event.get("subtype") == "message_deleted":
                await on_deleted(event, team)
            else:
                await on_edited(event, team, bot_user_id)

    async def on_deleted(event: dict[str, Any], team: str | None) -> None:
        previous = an_object(event.get("previous_message"))
        deleted_ts = event.get("deleted_ts") or previous.get("ts")
        channel = event.get("channel")
        if not (isinstance(deleted_ts, str) and isinstance(channel, str) and team):
            return
        for conversation in _conversations_holding(previous, deleted_ts, event):
            await turns.remove_message(ThreadKey(team, channel, conversation), deleted_ts)

    async def on_edited(event: dict[str, Any], team: str | None, bot_user_id: str) -> None:
        edited = an_object(event.get("message"))
        channel, ts = event.get("channel"), edited.get("ts")
        if edited.get("bot_id") or edited.get("user") == bot_user_id:
            return
        if not (isinstance(ts, str) and isinstance(channel, str) and team):
            return
        user = edited.get("user")
        # The edit's own ts (Slack's `edited.ts`, else the event's), by which the newest of two
        # edits whose events came in the other order wins.
        stamps = (an_object(edited.get("edited")).get("ts"), event.get("event_ts"), event.get("ts"))
        edited_ts = next((stamp for stamp in stamps if is_slack_ts(stamp)), "")
        for conversation in _conversations_holding(edited, ts, event):
            await turns.edit_message(
                ThreadKey(team, channel, conversation),
                ts,
                str(edited.get("text") or ""),
                bot_user_id,
                user=user if isinstance(user, str) else "",
                edited_ts=edited_ts,
                is_dm=event.get("channel_type") == "im",
            )

    app.event("app_mention")(on_app_mention)
    app.event("message")(on_message)
    app.event(re.compile(".*"))(on_other_event)
    return MessageListeners(new_message=on_new_message, change=on_change)


async def _incoming(
    event: dict[str, Any], team: str | None, bot_user_id: str, *, is_dm: bool, turns: TurnRunner
) -> IncomingMessage | None:
    """Decide whether (and how) the bot acts on a user's message; None means stay out of it."""
    channel, ts = event.get("channel"), event.get("ts")
    user, text, thread_ts = event.get("user"), event.get("text"), event.get("thread_ts")
    if event.get("bot_id") or user == bot_user_id:
        return None
    if not all(isinstance(v, str) and v for v in (team, channel, ts, user)):
        log.info("message ignored: missing team, channel, ts or user")
        return None
    if not isinstance(text, str):
        text = ""
    if not is_slack_ts(ts) or (thread_ts is not None and not is_slack_ts(thread_ts)):
        log.info("message ignored: ts or thread_ts is not a Slack ts")
        return None
    conversation = _conversation(ts, thread_ts, is_dm=is_dm)
    reply_thread_ts = thread_ts if is_dm else conversation
    action: Action
    if is_dm or f"<@{bot_user_id}" in text:
        action = "answer"
    elif thread_ts and await turns.is_followed(ThreadKey(team, channel, conversation)):
        # People @-mentioning each other, not the bot: keep it as context, don't butt in.
        action = "record" if mentions_others(text, bot_user_id) else "answer"
    else:
        return None
    if action == "answer" and is_command(text, bot_user_id, "reset"):
        action = "reset"
    elif action == "answer" and is_command(text, bot_user_id, "forget me"):
        action = "forget"
    return IncomingMessage(
        team=team,
        channel=channel,
        ts=ts,
        user=user,
        text=text,
        action=action,
        reply_thread_ts=reply_thread_ts,
        conversation=conversation,
        bot_user_id=bot_user_id,
        is_dm=is_dm,
    )


def _conversation(ts: str, thread_ts: str | None, *, is_dm: bool) -> str:
    """The conversation a message belongs to: its thread, or a DM's rolling top level."""
    if is_dm:
        return thread_ts or "dm"
    return thread_ts or ts


def _thread_of(event: dict[str, Any], team: str | None, *, is_dm: bool) -> ThreadKey | None:
    """The conversation a new message event belongs to, or None when its fields are not ids."""
    channel, ts = event.get("channel"), event.get("ts")
    thread_ts = event.get("thread_ts")
    if not (team and isinstance(channel, str) and is_slack_ts(ts)):
        return None
    if thread_ts is not None and not is_slack_ts(thread_ts):
        return None
    return ThreadKey(team, channel, _conversation(ts, thread_ts, is_dm=is_dm))


def _conversations_holding(message: dict[str, Any], ts: str, event: dict[str, Any]) -> list[str]:
    """The conversations a message may be stored in: its thread, or a DM's rolling top level."""
    thread_ts = message.get("thread_ts")
    found = [thread_ts] if isinstance(thread_ts, str) else [ts]
    if event.get("channel_type") == "im" and (thread_ts is None or thread_ts == ts):
        found.append("dm")
    return found
