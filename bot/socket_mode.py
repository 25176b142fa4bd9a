"""Socket Mode: the SDK's aiohttp client and Bolt's handler, with what the HTTP listener does
(bot/server.py) done here too.

- A person's new message (bot/events.py) is taken where the socket is read, without the SDK's
  queue and its task per envelope (in a burst those were two more passes of a crowded event loop
  between an envelope and its turn), and acknowledged once it is queued in Redis.
- An envelope that cannot be a request (not a JSON object, no envelope id, a payload Bolt would
  choke on) is logged and dropped, acknowledged when it has an id, so that Slack does not send it
  again; the SDK would have logged a traceback for some and handed the rest to Bolt.
- A request Bolt has no listener for, or fails on, is acknowledged too (over HTTP: 200 or 400), so
  that Slack neither sends it again nor counts a failed delivery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from slack_bolt.adapter.socket_mode.async_base_handler import AsyncBaseSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest

from bot.events import MessageIntake, shape_problem, until_queued

log = logging.getLogger(__name__)


class IntakeSocketModeClient(SocketModeClient):
    """The SDK's client; only what Bolt can handle reaches its queue."""

    def __init__(self, app_token: str, *, intake: MessageIntake, **options: Any) -> None:
        super().__init__(app_token, **options)
        self.intake = intake
        self._acknowledging: set[asyncio.Task[None]] = set()

    async def enqueue_message(self, message: str) -> None:
        """Called by the SDK's receiving loop for each text frame, in order."""
        if not message.strip():
            return  # as the SDK does with them
        try:
            envelope = json.loads(message)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            log.warning("socket mode message ignored reason=not a JSON object")
            return
        if "envelope_id" not in envelope:
            await super().enqueue_message(message)  # hello, disconnect
            return
        envelope_id, payload = envelope["envelope_id"], envelope.get("payload")
        if not isinstance(envelope_id, str) or not envelope_id:
            log.warning("socket mode envelope ignored reason=envelope_id is not a string")
            return
        problem = shape_problem(payload)
        if problem is not None:
            log.warning("socket mode envelope ignored type=%.40r reason=%s", envelope.get("type"), problem)
            await self.acknowledge(envelope_id)
        elif envelope.get("type") == "events_api" and (taken := self.intake.take(payload)):
            if isinstance(taken, asyncio.Task):
                # Not awaited here: this loop reads the socket, and the next envelope is waiting.
                acknowledging = asyncio.create_task(self._acknowledge_once_queued(envelope_id, taken))
                self._acknowledging.add(acknowledging)
                acknowledging.add_done_callback(self._acknowledging.discard)
            else:
                await self.acknowledge(envelope_id)
        else:
            await super().enqueue_message(message)

    async def _acknowledge_once_queued(self, envelope_id: str, listener: asyncio.Task[None]) -> None:
        if await until_queued(listener):
            await self.acknowledge(envelope_id)
        # Else left unacknowledged (its listener failed): Slack sends the envelope again.

    async def acknowledge(self, envelope_id: str) -> None:
        try:
            await self.send_socket_mode_response({"envelope_id": envelope_id})
        except Exception as error:
            # Not raised into the SDK's receiving loop, which would pause for a second or more;
            # that loop notices a dead socket. Slack sends an unacknowledged envelope again.
            log.warning("socket mode acknowledgement failed error=%s", type(error).__name__)


class SocketModeHandler(AsyncBaseSocketModeHandler):
    """Bolt's AsyncSocketModeHandler, on the client above."""

    client: IntakeSocketModeClient

    def __init__(self, app: AsyncApp, app_token: str, *, ping_interval: float, intake: MessageIntake) -> None:
        self.app = app  # type: ignore[assignment]
        self.app_token = app_token
        self.intake = intake
        self.client = IntakeSocketModeClient(
            app_token, intake=intake, logger=app.logger, web_client=app.client, ping_interval=ping_interval
        )
        self.client.socket_mode_request_listeners.append(self.handle)  # type: ignore[arg-type]

    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        start = time.time()
        try:
            response = await run_async_bolt_app(self.app, req)  # type: ignore[arg-type]
        except Exception as error:  # a request of a shape Bolt cannot handle
            log.warning("slack request rejected error=%s", type(error).__name__)
            await self.client.acknowledge(req.envelope_id)
            return
        if response.status == 200:
            await send_async_response(client, req, response, start)
            if req.type == "events_api":
                self.intake.bolt_dispatched(req.payload)
            return
        if response.status >= 500:
            # Bolt answers 500 when its own middleware trips on an odd shape.
            log.warning("slack request could not be processed by bolt status=%d", response.status)
        # 404: a well-formed request the bot has no use for.
        await self.client.acknowledge(req.envelope_id)
