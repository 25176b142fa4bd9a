"""Interactions: a press on an answer's feedback buttons is kept with the answer it rates, and the
person is thanked (only they see it)."""

from __future__ import annotations

import logging
import time
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from bot.delivery import Delivery
from bot.store import FeedbackVote, Store, StoreUnavailable
from bot.streaming import FEEDBACK_ACTION

log = logging.getLogger(__name__)


def register(app: AsyncApp, store: Store, delivery: Delivery) -> None:
    async def on_feedback(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await ack()
        vote = _vote(body, action, context)
        if vote is None:
            log.info("feedback ignored: payload without channel, message, user or vote")
            return
        try:
            await store.record_feedback(vote)
        except StoreUnavailable as error:
            log.error("feedback not stored team=%s channel=%s error=%s", vote.team, vote.channel, error)
            return
        log.info(
            "feedback team=%s channel=%s thread=%s answer=%s user=%s vote=%s",
            vote.team,
            vote.channel,
            vote.thread,
            vote.answer_ts,
            vote.user,
            vote.vote,
        )
        thread_ts = None if vote.thread == "dm" else vote.thread
        await delivery.thank_for_feedback(vote.team, vote.channel, thread_ts, vote.user)

    app.action(FEEDBACK_ACTION)(on_feedback)


def _vote(body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext) -> FeedbackVote | None:
    container = body.get("container") or {}
    message = body.get("message") or {}
    team = (body.get("team") or {}).get("id") or context.team_id
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    message_ts = container.get("message_ts") or message.get("ts")
    user = (body.get("user") or {}).get("id")
    vote, _, answer_ts = str(action.get("value") or "").partition(":")
    if not (team and channel and message_ts and user) or vote not in ("good", "bad"):
        return None
    thread_ts = message.get("thread_ts") or container.get("thread_ts")
    # The same conversation key the turn used: a thread, or a DM's rolling top level.
    if thread_ts and thread_ts != message_ts:
        thread = thread_ts
    elif channel.startswith("D"):
        thread = "dm"
    else:
        thread = message_ts
    return FeedbackVote(
        team=team,
        channel=channel,
        thread=thread,
        answer_ts=answer_ts or message_ts,
        message_ts=message_ts,
        user=user,
        vote=vote,  # type: ignore[arg-type]
        at=time.time(),
    )
