"""Interactions: a press on an answer's feedback buttons is kept with the answer it rates, then
acknowledged, and the person is thanked (only they see it)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from bot.delivery import Delivery
from bot.events import ACK_WAIT_SECONDS
from bot.listeners.fields import a_string, an_id, an_object
from bot.store import FeedbackVote, Store, StoreUnavailable
from bot.streaming import FEEDBACK_ACTION

log = logging.getLogger(__name__)


def register(app: AsyncApp, store: Store, delivery: Delivery) -> None:
    async def on_feedback(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        # Acknowledged once the vote is kept (at most ACK_WAIT_SECONDS): Slack never sends a
        # click again, but one whose process dies before it is kept then shows the person that
        # it failed, so they can click again, instead of looking taken and being lost.
        keeping = asyncio.ensure_future(keep_vote(body, action, context))
        await asyncio.wait((keeping,), timeout=ACK_WAIT_SECONDS)
        await ack()
        try:
            vote, kept = await keeping
            if vote is not None:
                # Not kept (Redis down): the click looked taken, so the person is told it was not.
                thread_ts = None if vote.thread == "dm" else vote.thread
                await delivery.thank_for_feedback(vote.team, vote.channel, thread_ts, vote.user, kept=kept)
        except Exception as error:
            # Never into Bolt: its runner answers a listener that raised soon after its own ack()
            # as if it had never acknowledged (over HTTP: nothing for 3 s, and Slack shows the
            # click as failed). Every failure known is handled below; this is for the unknown.
            log.error("feedback listener failed error=%s", type(error).__name__, exc_info=error)

    async def keep_vote(
        body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> tuple[FeedbackVote | None, bool]:
        """The click's vote (None when it carries none), and whether it was stored."""
        vote = _vote(body, action, context)
        if vote is None:
            log.info("feedback ignored: payload without channel, message, user or vote")
            return None, False
        try:
            await store.record_feedback(vote)
        except StoreUnavailable as error:
            log.error("feedback not stored team=%s channel=%s error=%s", vote.team, vote.channel, error)
            return vote, False
        log.info(
            "feedback team=%s channel=%s thread=%s answer=%s user=%s vote=%s",
            vote.team,
            vote.channel,
            vote.thread,
            vote.answer_ts,
            vote.user,
            vote.vote,
        )
        return vote, True

    app.action(FEEDBACK_ACTION)(on_feedback)


def _vote(body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext) -> FeedbackVote | None:
    """The vote a click carries, or None when any part of it that the vote needs is missing or
    not an id (a payload can hold anything)."""
    container, message = an_object(body.get("container")), an_object(body.get("message"))
    team = an_id(body.get("team")) or a_string(context.team_id)
    channel = a_string(container.get("channel_id")) or an_id(body.get("channel"))
    message_ts = a_string(container.get("message_ts")) or a_string(message.get("ts"))
    user = an_id(body.get("user"))
    value = action.get("value")
    vote, _, answer_ts = (value if isinstance(value, str) else "").partition(":")
    if not (team and channel and message_ts and user) or vote not in ("good", "bad"):
        return None
    thread_ts = a_string(message.get("thread_ts")) or a_string(container.get("thread_ts"))
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
