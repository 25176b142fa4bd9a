"""Bolt listeners: each turns a Slack event or interaction into a call on the bot. `register` maps them."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.events import MessageListeners
from bot.listeners import actions, messages
from bot.store import Store
from bot.turn import TurnRunner


def register(app: AsyncApp, turns: TurnRunner, store: Store) -> MessageListeners:
    """Returns the listeners for a person's new, edited or deleted message, which bot/events.py
    may call directly."""
    message_listeners = messages.register(app, turns)
    actions.register(app, store, turns.delivery)
    return message_listeners
