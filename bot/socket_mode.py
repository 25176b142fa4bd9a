"""Socket Mode: Bolt's handler, with a person's new messages taken before Bolt's dispatch (see
bot/events.py), as the HTTP listener does."""

from __future__ import annotations

import time

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.events import MessageIntake, shape_problem


class SocketModeHandler(AsyncSocketModeHandler):
    def __init__(self, app: AsyncApp, app_token: str, *, ping_interval: float, intake: MessageIntake) -> None:
        super().__init__(app, app_token, ping_interval=ping_interval)
        self.intake = intake

    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        start = time.time()
        is_event = req.type == "events_api" and shape_problem(req.payload) is None
        if is_event and self.intake.take(req.payload):
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        response = await run_async_bolt_app(self.app, req)
        await send_async_response(client, req, response, start)
        if is_event and response.status == 200:
            self.intake.bolt_dispatched(req.payload)
