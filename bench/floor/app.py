"""The floor: the least work any Slack LLM bot must do per question, in asyncio Python.

Per question it takes in the event (HTTP mode: checks the request's signature; Socket Mode: acks
the envelope), drops the twin of a channel mention (Slack sends a mention as `message` and as
`app_mention`), shows the thinking status (`assistant.threads.setStatus`), reads the model's answer
as a Chat Completions stream over aiohttp and posts it whole with `chat.postMessage` in the
question's thread. Nothing else: no Bolt, no slack_sdk, no Redis.

The benchmark runs it beside the real bot to show what the harness and the machine allow: a bot
cannot do better than this here. It is not a bot anyone should ship: it stores nothing (no
conversation, no history; the model sees only the question), knows twins only in this process's
memory (no dedup across processes or restarts), never retries, keeps no rate budget and shows no
error to the user. It reads the same environment variables as the real bot.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("floor")

MAX_REQUEST_AGE = 300  # seconds: Slack's own limit on a signed request's timestamp
LISTEN_BACKLOG = 2048
TWINS_REMEMBERED = 10_000  # questions whose twin event may still come
STATUS = "is thinking…"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The event loop the bot runs on (app.py), so that the gap between the two is the bot's own.
    asyncio.run(serve(os.environ))


async def serve(env: Mapping[str, str]) -> None:
    """Answer until SIGTERM or SIGINT; answers in flight are dropped."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),  # hundreds of questions at once, each its own requests
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
    ) as session:
        floor = Floor(session, env)
        app = web.Application()
        app.router.add_get("/health", floor.health)
        socket_task = None
        if env.get("SLACK_APP_TOKEN"):
            socket_task = asyncio.create_task(floor.socket_mode(env["SLACK_APP_TOKEN"]))
        else:
            app.router.add_post("/slack/events", floor.http_event)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = env.get("HOST", "0.0.0.0"), int(env.get("PORT", "3000"))
        # As the bot: aiohttp's backlog of 128 overflows when hundreds of connections open at once.
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
        log.info("floor serving in %s mode", "socket" if socket_task else "http")
        await stopping.wait()
        if socket_task is not None:
            socket_task.cancel()
        await runner.cleanup()


class Floor:
    """Takes in events and answers each question once, per process."""

    def __init__(self, session: aiohttp.ClientSession, env: Mapping[str, str]) -> None:
        self.session = session
        self.signing_secret = env.get("SLACK_SIGNING_SECRET", "").encode()
        self.api_url = env.get("SLACK_API_URL", "https://slack.com/api/").rstrip("/") + "/"
        self.slack_headers = {"Authorization": f"Bearer {env['SLACK_BOT_TOKEN']}"}
        self.model_url = env.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        self.model_url += "/chat/completions"
        self.model_headers = {"Authorization": f"Bearer {env.get('OPENAI_API_KEY', '')}"}
        self.model = env.get("OPENAI_MODEL", "gpt-4o-mini")
        self.socket_mode_on = bool(env.get("SLACK_APP_TOKEN"))
        self.socket_connected = False
        self._seen: dict[tuple[str, str], None] = {}  # (channel, ts) of questions taken, oldest first
        self._answering: set[asyncio.Task[None]] = set()

    # -- events in --

    async def http_event(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not (timestamp.isdigit() and abs(time.time() - int(timestamp)) < MAX_REQUEST_AGE):
            return web.Response(status=401)
        digest = hmac.new(self.signing_secret, f"v0:{timestamp}:".encode() + body, hashlib.sha256)
        if not hmac.compare_digest("v0=" + digest.hexdigest(), request.headers.get("X-Slack-Signature", "")):
            return web.Response(status=401)
        self.take(json.loads(body))
        return web.Response()

    async def socket_mode(self, app_token: str) -> None:
        """One Socket Mode connection, opened again whenever it closes."""
        while True:
            try:
                await self._socket_connection(app_token)
            except (aiohttp.ClientError, OSError, KeyError, ValueError) as error:
                log.warning("socket mode connection failed: %s: %s", type(error).__name__, error)
            self.socket_connected = False
            await asyncio.sleep(1)

    async def _socket_connection(self, app_token: str) -> None:
        headers = {"Authorization": f"Bearer {app_token}"}
        async with self.session.post(self.api_url + "apps.connections.open", headers=headers) as response:
            url = (await response.json())["url"]
        async with self.session.ws_connect(url, heartbeat=10) as socket:
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                envelope = json.loads(message.data)
                if envelope.get("type") == "hello":
                    self.socket_connected = True
                elif envelope.get("type") == "disconnect":
                    return
                elif "envelope_id" in envelope:
                    await socket.send_str(json.dumps({"envelope_id": envelope["envelope_id"]}))
                    if envelope.get("type") == "events_api":
                        self.take(envelope["payload"])

    async def health(self, request: web.Request) -> web.Response:
        ready = self.socket_connected or not self.socket_mode_on
        return web.json_response({"status": "ok" if ready else "error"}, status=200 if ready else 503)

    def take(self, body: dict[str, Any]) -> None:
        """Start answering an event's question, unless it is not one or its twin came first."""
        event = body.get("event") or {}
        if event.get("subtype") or event.get("bot_id") or "user" not in event:
            return
        bot_users = [a.get("user_id") for a in body.get("authorizations") or ()]
        kind = event.get("type")
        if kind == "message" and event.get("channel_type") != "im":
            if not any(f"<@{user}>" in event.get("text", "") for user in bot_users):
                return
        elif kind not in ("message", "app_mention"):
            return
        key = (event["channel"], event["ts"])
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > TWINS_REMEMBERED:
            del self._seen[next(iter(self._seen))]
        task = asyncio.create_task(self._logged(self.answer(event)))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    # -- the answer --

    async def answer(self, event: dict[str, Any]) -> None:
        channel, thread = event["channel"], event.get("thread_ts") or event["ts"]
        await self.slack("assistant.threads.setStatus", channel_id=channel, thread_ts=thread, status=STATUS)
        text = await self.ask_model(event.get("text", ""))
        await self.slack("chat.postMessage", channel=channel, thread_ts=thread, text=text)

    async def ask_model(self, question: str) -> str:
        body = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": question}]}
        pieces: list[str] = []
        async with self.session.post(self.model_url, json=body, headers=self.model_headers) as response:
            response.raise_for_status()
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                for choice in json.loads(data).get("choices") or ():
                    pieces.append((choice.get("delta") or {}).get("content") or "")
        return "".join(pieces)

    async def slack(self, method: str, **args: Any) -> dict[str, Any]:
        url = self.api_url + method
        async with self.session.post(url, json=args, headers=self.slack_headers) as response:
            found = await response.json()
        if not found.get("ok"):
            raise RuntimeError(f"{method}: {found.get('error')}")
        return found

    @staticmethod
    async def _logged(answering: Awaitable[None]) -> None:
        try:
            await answering
        except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as error:
            log.warning("no answer: %s: %s", type(error).__name__, error)


if __name__ == "__main__":
    main()
