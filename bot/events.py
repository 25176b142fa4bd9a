"""A person's message on its way in, before Bolt: in both modes, the events that carry a new one
(`message` without a subtype or with one of `NEW_MESSAGE_SUBTYPES`, `app_mention`) go straight to
the new-message listener, and those that edit or delete one (`CHANGE_SUBTYPES`) to the change
listener; Bolt dispatches everything else.

Bolt's dispatch of an event (building its request and context, matching it against every
listener, building each listener's arguments) costs some 150 µs of CPU, as much as a tenth of the
whole turn of a quick answer; for these events all it would do is what `MessageIntake.take`
does: skip the bot's own messages and hand the event, the team and the bot's user id to the
listener. It needs the bot's identity from `auth.test`; until Slack has answered it (asked at
start, and again in the background if that failed: bot/server.py), Bolt dispatches these events
too, and asks Slack itself.

A person's new message is acknowledged once it is queued in Redis (or its sender was told why it
cannot be), and an edit or a deletion once the stored conversation has it, not before: a process
killed in between (SIGKILL, the machine, the kernel's OOM killer) leaves the event
unacknowledged, and Slack sends it again, to this process or another.
Queueing takes a Redis round trip, a few hundred milliseconds in a burst of 500; a Redis that
stalls longer than `ACK_WAIT_SECONDS` gets the acknowledgement sent anyway, within Slack's 3 s.
A listener that fails (an edit or a deletion while Redis is down: Redis refuses within the ack's
wait) leaves its event unacknowledged too, so that Slack sends it again (at once, after a minute,
after five) and the change is applied once Redis is back, not dropped.

A channel mention comes as two events for one message, `message` and `app_mention`, mostly to the
same process: the second is acknowledged without any work here (should this process die before
the first is queued, Slack sends the first again). Redis still dedups across processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from slack_bolt.request.internals import extract_team_id

log = logging.getLogger(__name__)

# A person's new message: the event, the team it came from, the bot's user id, and whether it is
# a DM.
NewMessageListener = Callable[[dict[str, Any], str | None, str, bool], Awaitable[None]]
# A person's message edited or deleted: the event, the team, the bot's user id.
MessageChangeListener = Callable[[dict[str, Any], str | None, str], Awaitable[None]]

EventKey = tuple[str, str, str]  # (team, channel, ts)
# Subtypes of `message` that are still a person saying something: with a file, also sent to the
# channel from a thread, /me.
NEW_MESSAGE_SUBTYPES = frozenset({"file_share", "thread_broadcast", "me_message"})
# Subtypes of `message` that change what a person said: what the stored conversation must follow.
CHANGE_SUBTYPES = frozenset({"message_changed", "message_deleted"})
DISPATCHED_REMEMBERED = 10_000  # a twin comes within moments of its first event
# The longest an acknowledgement waits for its message to be queued: Slack wants one within 3 s.
ACK_WAIT_SECONDS = 2.0

# What `MessageIntake.take` did with an event: False, not taken (Bolt dispatches it); True, taken
# and nothing to wait for; a task, the listener queueing the message (acknowledge it when done).
Taken = bool | asyncio.Task[None]


@dataclass(frozen=True)
class MessageListeners:
    """The listeners `MessageIntake` calls directly."""

    new_message: NewMessageListener
    change: MessageChangeListener


@dataclass(frozen=True)
class BotIdentity:
    """Who the bot is in its workspace, from auth.test."""

    user_id: str
    bot_id: str | None


class DispatchedMessages:
    """The messages whose first event was dispatched here, the most recent ones."""

    def __init__(self, size: int = DISPATCHED_REMEMBERED) -> None:
        self._size = size
        self._keys: OrderedDict[EventKey, None] = OrderedDict()

    def __contains__(self, key: EventKey) -> bool:
        return key in self._keys

    def discard(self, key: EventKey) -> None:
        self._keys.pop(key, None)

    def add(self, key: EventKey) -> None:
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)


class MessageIntake:
    """Takes the events that carry, edit or delete a person's message, in either mode."""

    def __init__(self, dispatched: DispatchedMessages | None = None) -> None:
        self.dispatched = dispatched if dispatched is not None else DispatchedMessages()
        self._listeners: MessageListeners | None = None
        self._identity: BotIdentity | None = None
        self._started: set[asyncio.Task[None]] = set()

    def connect(self, listeners: MessageListeners, identity: BotIdentity | None) -> None:
        """Call the listeners directly from now on; with no identity, leave it all to Bolt."""
        self._listeners = listeners
        self._identity = identity

    def take(self, body: dict[str, Any]) -> Taken:
        """True, or the listener's task, when the event is taken here: acknowledge it (once the
        task is done: `until_queued`) and do nothing more. False: let Bolt dispatch it, and call
        `bolt_dispatched` when Bolt acknowledged it. `body` must have passed `shape_problem`."""
        key = message_event_key(body)
        if key is None:
            return self._take_change(body)
        if key in self.dispatched and not _mention_edited_in(body["event"]):
            log.debug("second event of a message acknowledged team=%s channel=%s ts=%s", *key)
            return True
        listeners, identity = self._listeners, self._identity
        if listeners is None or identity is None:
            return False
        event = body["event"]
        # As Bolt's IgnoringSelfEvents middleware: the bot's own messages come back as events.
        if _is_own(event, identity):
            return True
        self.dispatched.add(key)
        is_dm = event["type"] == "message" and event.get("channel_type") == "im"
        task = self._start(listeners.new_message(event, extract_team_id(body), identity.user_id, is_dm))
        # Not acknowledged when it fails: Slack's next delivery of it (its twin's, or its retry)
        # must be taken, not acknowledged as a second event.
        task.add_done_callback(partial(self._forget_if_failed, key))
        return task

    def _forget_if_failed(self, key: EventKey, task: asyncio.Task[None]) -> None:
        if _failed(task):
            self.dispatched.discard(key)

    def _take_change(self, body: dict[str, Any]) -> Taken:
        """An edit or a deletion of a message: taken as a new message is, or left to Bolt."""
        listeners, identity = self._listeners, self._identity
        if listeners is None or identity is None or body.get("type") != "event_callback":
            return False
        event = body["event"]
        subtype = event.get("subtype")
        if event["type"] != "message" or not (isinstance(subtype, str) and subtype in CHANGE_SUBTYPES):
            return False
        # The bot's own answers are edited as they are written: each edit comes back as an event.
        changed = event.get("message" if subtype == "message_changed" else "previous_message")
        if isinstance(changed, dict) and _is_own(changed, identity):
            return True
        return self._start(listeners.change(event, extract_team_id(body), identity.user_id))

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._started.add(task)
        task.add_done_callback(self._listener_done)
        return task

    def bolt_dispatched(self, body: dict[str, Any]) -> None:
        """Bolt acknowledged this event: its twin, if any, is taken here."""
        if (key := message_event_key(body)) is not None:
            self.dispatched.add(key)

    def _listener_done(self, task: asyncio.Task[None]) -> None:
        self._started.discard(task)
        if _failed(task):
            # Its event is not acknowledged (when the failure came within the wait for the ack):
            # Slack sends it again.
            error = task.exception()
            log.error("message listener failed error=%s", type(error).__name__, exc_info=error)


def _mention_edited_in(event: dict[str, Any]) -> bool:
    """An `app_mention` Slack sends when a message is edited to mention the bot (or edited while
    it does): not a second event of one already handled. A message that first did not mention the
    bot was taken and left alone; this one is for the listener (the dedup in Redis tells a mention
    answered already)."""
    return event.get("type") == "app_mention" and isinstance(event.get("edited"), dict)


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _is_own(message: dict[str, Any], identity: BotIdentity) -> bool:
    return message.get("user") == identity.user_id or (
        identity.bot_id is not None and message.get("bot_id") == identity.bot_id
    )


async def until_queued(taken: Taken) -> bool:
    """Wait, before acknowledging a taken event, until its listener has queued the message, or
    stored the edit or deletion (or told its sender why not), at most `ACK_WAIT_SECONDS`. The
    listener goes on after a timeout. False when the listener failed: leave the event
    unacknowledged, for Slack to send again."""
    if isinstance(taken, asyncio.Task):
        if not taken.done():
            await asyncio.wait((taken,), timeout=ACK_WAIT_SECONDS)
        return not _failed(taken)
    return True


def shape_problem(body: object) -> str | None:
    """Why a parsed body cannot be a Slack request, or None. Bolt assumes these shapes."""
    if not isinstance(body, dict) or not body:
        return "the body is not an object"
    if not isinstance(body.get("type"), str):
        return "no type"
    authorizations = body.get("authorizations")
    if authorizations is not None and not (
        isinstance(authorizations, list) and all(isinstance(a, dict) for a in authorizations)
    ):
        return "authorizations is not a list of objects"
    if "event" in body and not isinstance(body["event"], dict):
        return "event is not an object"  # Bolt's middleware reads it as one (null too), whatever the type
    if body["type"] == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return "event_callback without an event object that has a type"
        # Bolt reads these as an id or an object with an id; anything else makes it crash. It
        # reads the first authorization's before the body's (shared channels).
        for where in (body, event, *(authorizations or [])[:1]):
            for name in ("user", "channel", "team"):
                value = where.get(name)
                if value is not None and not isinstance(value, str | dict):
                    return f"{name} has the wrong type"
    if body["type"] in ("block_actions", "interactive_message"):
        # Bolt's matchers and middleware read actions[0] as an object, and a block action's
        # action_id as a string.
        actions = body.get("actions")
        if not (isinstance(actions, list) and actions and all(isinstance(a, dict) for a in actions)):
            return f"{body['type']} without a list of action objects"
        if body["type"] == "block_actions" and not all(isinstance(a.get("action_id"), str) for a in actions):
            return "block_actions with an action without an action_id"
    # The team is read from any of several places (the first authorization's first); whichever
    # is read must be an id, or a thread's key could not be built from it.
    try:
        team = extract_team_id(body)
    except (AttributeError, TypeError, KeyError, IndexError):
        return "the team cannot be read"
    if team is not None and not isinstance(team, str):
        return "the team id is not a string"
    return None


def message_event_key(body: dict[str, Any]) -> EventKey | None:
    """(team, channel, ts) of an event about a person's new message (`message` without a
    subtype or with one of `NEW_MESSAGE_SUBTYPES`, or `app_mention`), or None."""
    if body.get("type") != "event_callback":
        return None
    event = body["event"]  # checked by shape_problem: an object with a type
    if event["type"] not in ("message", "app_mention"):
        return None
    subtype = event.get("subtype")  # a hostile one may be of any type, unhashable included
    if "subtype" in event and not (
        event["type"] == "message" and isinstance(subtype, str) and subtype in NEW_MESSAGE_SUBTYPES
    ):
        return None
    key = (body.get("team_id"), event.get("channel"), event.get("ts"))
    return key if all(isinstance(part, str) for part in key) else None  # type: ignore[return-value]
