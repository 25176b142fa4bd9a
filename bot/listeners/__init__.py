"""Bolt listeners: each turns a Slack event into a call on the turn runner. `register` maps them."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.listeners import messages
from bot.turn import TurnRunner


def register(app: AsyncApp, turns: TurnRunner) -> None:
    messages.register(app, turns)
