"""Reading the fields of a Slack payload, which can hold anything: each helper returns the kind of
value asked for, or an empty one."""

from __future__ import annotations

import re
from typing import Any

# Slack's message ts: seconds, a dot, microseconds. A waiting message is scored and ordered by it
# in Redis (a float there) and in Python (a Decimal), so anything else would be read differently
# by each, or not at all.
_SLACK_TS = re.compile(r"\d{1,12}\.\d{1,9}")


def an_object(value: object) -> dict[str, Any]:
    """A field that should hold an object; anything else counts as empty."""
    return value if isinstance(value, dict) else {}


def a_string(value: object) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def an_id(value: object) -> str | None:
    """An id given as itself or as an object's `id`, as Slack gives teams, users and channels."""
    return a_string(value) or a_string(an_object(value).get("id"))


def is_slack_ts(value: object) -> bool:
    """A message ts as Slack writes it ("1712345678.000100")."""
    return isinstance(value, str) and _SLACK_TS.fullmatch(value) is not None
