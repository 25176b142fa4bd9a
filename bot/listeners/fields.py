"""Reading the fields of a Slack payload, which can hold anything: each helper returns the kind of
value asked for, or an empty one."""

from __future__ import annotations

from typing import Any


def an_object(value: object) -> dict[str, Any]:
    """A field that should hold an object; anything else counts as empty."""
    return value if isinstance(value, dict) else {}


def a_string(value: object) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def an_id(value: object) -> str | None:
    """An id given as itself or as an object's `id`, as Slack gives teams, users and channels."""
    return a_string(value) or a_string(an_object(value).get("id"))
