"""What the bot checks of a Slack event before Bolt sees it: that it has the shapes Bolt assumes,
and whether it is the second event of a message whose first Bolt has dispatched already.

A channel mention comes as two events for one message, `message` and `app_mention`, mostly to the
same process. Bolt has nothing to do for the second (the listener would drop it as a duplicate),
so both modes acknowledge it without Bolt's dispatch: a sixth of taking in a question over HTTP,
more in Socket Mode. Redis still dedups across processes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

EventKey = tuple[str, str, str]  # (team, channel, ts)
DISPATCHED_REMEMBERED = 10_000  # a twin comes within moments of its first event


class DispatchedMessages:
    """The messages whose first event Bolt dispatched here, the most recent ones."""

    def __init__(self, size: int = DISPATCHED_REMEMBERED) -> None:
        self._size = size
        self._keys: OrderedDict[EventKey, None] = OrderedDict()

    def __contains__(self, key: EventKey) -> bool:
        return key in self._keys

    def add(self, key: EventKey) -> None:
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)


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
    if body["type"] == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return "event_callback without an event object that has a type"
        # Bolt reads these as an id or an object with an id; anything else makes it crash.
        for where in (body, event):
            for name in ("user", "channel", "team"):
                value = where.get(name)
                if value is not None and not isinstance(value, str | dict):
                    return f"{name} has the wrong type"
    return None


def message_event_key(body: dict[str, Any]) -> EventKey | None:
    """(team, channel, ts) of an event about a person's new message (`message` without a
    subtype, or `app_mention`), or None."""
    if body.get("type") != "event_callback":
        return None
    event = body["event"]  # checked by shape_problem: an object with a type
    if event["type"] not in ("message", "app_mention") or "subtype" in event:
        return None
    key = (body.get("team_id"), event.get("channel"), event.get("ts"))
    return key if all(isinstance(part, str) for part in key) else None  # type: ignore[return-value]
