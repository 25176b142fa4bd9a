"""Slack message text the bot reads: mentions in it, and turning it into plain text for the model.

What the bot writes is formatted in bot/formatting.py."""

from __future__ import annotations

import re
from collections.abc import Mapping

_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_GROUP_MENTION = re.compile(r"<!subteam\^[A-Z0-9]+(?:\|([^>]*))?>")
_SPECIAL_MENTION = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_CHANNEL_LINK = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
# C0 and C1 control characters other than tab and newline: noise to the model, risky in logs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINK = re.compile(r"<((?:https?|mailto):[^>|]+)(?:\|([^>]*))?>")


def mentioned_users(text: str) -> set[str]:
    return set(_USER_MENTION.findall(text))


def mentions_others(text: str, bot_user_id: str) -> bool:
    """True when the message @-mentions people (or a group) other than the bot."""
    return bool(mentioned_users(text) - {bot_user_id}) or bool(_GROUP_MENTION.search(text))


def to_plain_text(text: str, bot_user_id: str, names: Mapping[str, str]) -> str:
    """What the model reads: the bot's own mention removed, other Slack markup made readable."""
    text = _CONTROL.sub("", text)
    text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _USER_MENTION.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text)
    text = _GROUP_MENTION.sub(lambda m: "@" + (m.group(1) or "group").lstrip("@"), text)
    text = _SPECIAL_MENTION.sub(lambda m: "@" + m.group(1), text)
    text = _CHANNEL_LINK.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def is_command(text: str, bot_user_id: str, command: str) -> bool:
    """True when the message is just `command` (ignoring the bot's mention and case)."""
    bare = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    return bare.strip().strip(".!").lower() == command
