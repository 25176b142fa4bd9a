"""Bolt listeners: each turns a Slack event or interaction into a call on the bot. `register` maps them."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.listeners import actions, messages
from bot.listeners.messages import NewMessageListener
from bot.store import Store
from bot.turn import TurnRunner


def register(app: AsyncApp, turns: TurnRunner, store: Store) -> NewMessageListener:
    """Returns the listener for a person's new message, which bot/events.py may call directly."""
    on_new_message = messages.register(app, turns)
    actions.register(app, store, turns.delivery)
    return on_new_message
