"""A local Slack for tests: the Web API, Events API over signed HTTP, and Socket Mode.

One aiohttp server on 127.0.0.1 plays Slack. The bot talks to it with its ordinary
slack_sdk clients (``AsyncWebClient(base_url=emu.api_url)``); tests play the users with
``post_user_message`` and friends and read back what the bot did through ``calls``,
``messages``, ``bot_messages`` and ``statuses``.

Message ``ts`` values follow the wall clock in microseconds and strictly increase, so a
message's age looks real to the bot. A delivery that fails is not sent again unless
``retry_failed_deliveries()`` is called: then an event the bot did not acknowledge (no ack on the
socket within ``ack_timeout``; over HTTP a timeout, a refused connection or a status other than
2xx) goes again as Slack sends it, with the next retry number and a reason, up to three times.
A test can also send a retry itself with ``deliver_event(..., retry_num=1)``. ``stall_socket``
plays a connection that stops carrying the client's frames (a half-open one), with or without
the emulator's own writes getting through.

A Web API method is one entry in ``handlers``: a function from the call's arguments to the
response's fields, raising ``ApiError("some_error")`` to fail. Add one there (and its name to
``POSTING_METHODS`` when it posts messages, e.g. chat.startStream).

Streaming (chat.startStream / appendStream / stopStream) keeps every state a streamed message
went through (``stream_states``); ``press_stop`` plays a user pressing stop, and
``refuse_streaming`` makes a kind of conversation answer ``channel_type_not_supported``.

Rate limits are off unless ``enforce_rate_limits()`` is called: then each method has Slack's
budget per workspace by tier (Tier 2: 20 a minute, Tier 3: 50, Tier 4: 100), chat.postMessage
one a second per channel and assistant.threads.setStatus one a second per thread, all over
windows multiplied by ``time_scale``; a call past its budget gets a 429 with Retry-After and is
logged in ``rate_limited``. ``inject_429s(every=n)`` answers every n-th call with a 429 anyway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import inspect
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from yarl import URL

Handler = Callable[[dict], dict]

MAX_TEXT = 40_000
MAX_MARKDOWN_TEXT = 12_000
# Arguments whose values are JSON; form-encoded requests carry them as strings.
JSON_ARGS = ("blocks", "attachments", "metadata", "loading_messages", "chunks", "prompts")
KINDS = ("channel", "group", "im", "mpim")
KIND_BY_PREFIX = {"C": "channel", "G": "group", "D": "im"}
APP_TOKEN_METHODS = {"apps.connections.open"}
# Methods whose successful answers are messages the bot posted (see bot_messages).
POSTING_METHODS = ("chat.postMessage", "chat.startStream")
# Emulator bookkeeping on stored messages, never sent to the bot.
PRIVATE_KEYS = ("edits", "streaming", "stream_states", "stopped_by_user", "markdown")
# Calls a minute per workspace, by tier (../shared/slack/methods/*.json: rate_limits).
TIER_CALLS = {"t1": 1, "t2": 20, "t3": 50, "t4": 100}
METHOD_TIERS = {
    "chat.startStream": "t2",
    "chat.stopStream": "t2",
    "chat.appendStream": "t4",
    "chat.update": "t3",
    "chat.delete": "t3",
    "chat.postEphemeral": "t4",
    "reactions.add": "t3",
    "reactions.remove": "t2",
    "conversations.replies": "t3",
    "conversations.info": "t3",
    "users.info": "t4",
}
STREAM_CONTENT_LIMIT = 12_000  # characters of Markdown in one streamed message
THREAD_KEYS = ("thread_ts", "reply_count", "reply_users", "reply_users_count", "latest_reply")


class ApiError(Exception):
    """Raised by a method handler to answer {"ok": false, "error": str(exc)}."""


@dataclass
class ApiCall:
    """One Web API request the bot made, and what the emulator answered."""

    method: str
    args: dict
    token: str | None
    response: dict
    status: int
    at: float  # time.monotonic()


@dataclass
class Delivery:
    """How the bot answered one event delivery."""

    status: int | None  # HTTP status in HTTP mode; None in Socket Mode or without an answer
    body: str  # HTTP response body, or the ack's payload as JSON ("" when it had none)
    acked: bool
    elapsed: float  # from sent_at to the answer (or to giving up)
    event_id: str = ""
    # time.monotonic() when sending began: right before the request's connection was taken or
    # opened, or the envelope written to the socket.
    sent_at: float = 0.0
    retry_attempt: int = 0  # 0 for a first delivery, n for Slack's n-th retry of it


@dataclass(frozen=True)
class PreparedDelivery:
    """One delivery built, serialized and (in HTTP mode) signed, ready to be written.

    ``url`` is the bot's request URL, or None for the Socket Mode connection. ``data`` is the
    request body, or the whole Socket Mode envelope as JSON; ``headers`` are the HTTP headers,
    signature included.
    """

    url: str | None
    data: bytes
    headers: dict[str, str]
    event_id: str
    envelope_id: str = ""
    retry_attempt: int = 0
    kind: str = "events_api"  # or "interactive"


# Slack's waits before its retries of a failed event delivery: at once, after a minute, after five.
SLACK_RETRY_WAITS = (0.0, 60.0, 300.0)


@dataclass
class Gate:
    """Calls to one method whose arguments include `match` wait until `opened` is set."""

    match: dict[str, str]
    when: Callable[[dict], bool] | None = None  # and this, if given, says yes to the arguments
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0  # calls held at the gate now
    answered: bool = False  # the call is carried out first, and only its answer held

    def admits(self, args: dict) -> bool:
        matched = all(args.get(name) == value for name, value in self.match.items())
        return matched and (self.when is None or self.when(args))

    async def held(self) -> None:
        self.waiting += 1
        try:
            await self.opened.wait()
        finally:
            self.waiting -= 1


@dataclass
class _Fault:
    error: str
    status: int
    retry_after: float | None
    drop: bool = False  # cut the connection instead of answering
    after: bool = False  # carry the call out first, then cut or fail (the answer is lost)
    body: str | None = None  # answer with this text instead of Slack's JSON
    body_type: str = "text/html"


_MARKDOWN_LINK = re.compile(r"\[(?P<label>[^\]]*)\]\((?P<url>[^)\s]*)\)")


def _unmarked(markdown: str) -> str:
    """Markdown's text without its emphasis marks, as a rich_text element carries it."""
    return markdown.replace("**", "").replace("__", "").replace("`", "")


def _truthy(value: Any) -> bool:
    # slack_sdk sends booleans as "1"/"0" in forms and as true/false in JSON.
    return value in (True, 1, "1", "true")


def _micros(ts: str) -> int:
    return int(Decimal(ts) * 1_000_000)


def _timeline_filter(args: dict) -> Callable[[dict], bool]:
    """Messages after `oldest` and before `latest` (either end included with `inclusive`)."""
    try:
        oldest = Decimal(args.get("oldest") or "0")
        latest = Decimal(args["latest"]) if args.get("latest") else None
    except ArithmeticError as exc:
        raise ApiError("invalid_ts_oldest") from exc
    inclusive = _truthy(args.get("inclusive"))

    def within(message: dict) -> bool:
        ts = Decimal(message["ts"])
        if ts < oldest or (ts == oldest and not inclusive):
            return False
        return latest is None or ts < latest or (ts == latest and inclusive)

    return within


def _encode_cursor(ts: str) -> str:
    # Shaped like Slack's own cursors: base64 of "next_ts:<ts digits>".
    return base64.b64encode(f"next_ts:{ts}".encode()).decode()


def _decode_cursor(cursor: str) -> Decimal:
    try:
        prefix, ts = base64.b64decode(cursor, validate=True).decode().split(":", 1)
        if prefix != "next_ts":
            raise ValueError(prefix)
        return Decimal(ts)
    except (ValueError, ArithmeticError) as exc:
        raise ApiError("invalid_cursor") from exc


class SlackEmulator:
    """Slack's Web API, Events API and Socket Mode on one local aiohttp server."""

    def __init__(
        self,
        *,
        team_id: str = "T1",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_id: str = "A1",
        bot_token: str = "xoxb-test-token",
        app_token: str = "xapp-test-token",
        signing_secret: str = "test-signing-secret",
    ) -> None:
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.ack_timeout = 3.0  # how long a Socket Mode delivery waits for the ack, as Slack does
        self.http_timeout = 3.0  # Slack gives an HTTP request URL three seconds
        self.calls: list[ApiCall] = []
        self.acks: list[dict] = []
        self.deliveries: list[Delivery] = []
        self.statuses: dict[tuple[str, str], str] = {}
        self.status_history: list[tuple[str, str, str]] = []  # (channel, thread_ts, status)
        self.socket_connections = 0
        # Slack sends each envelope to one of the app's open connections. By default here, the
        # newest (what reconnection tests need); spread, to each in turn (several processes).
        self.spread_envelopes = False
        # Slack renders a markdown block (and markdown_text) into blocks of its own, "maybe
        # several", keeping no block id of it; what it gives back is not published. With this
        # on, conversations.history / .replies give such messages back rendered (see _read_back).
        self.render_markdown = False
        self._next_socket = 0
        self.port = 0
        self.handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "conversations.replies": self._conversations_replies,
            "conversations.history": self._conversations_history,
            "chat.postMessage": self._chat_post_message,
            "chat.startStream": self._chat_start_stream,
            "chat.appendStream": self._chat_append_stream,
            "chat.stopStream": self._chat_stop_stream,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "assistant.threads.setStatus": self._set_status,
            "apps.connections.open": self._apps_connections_open,
        }
        self._users: dict[str, dict] = {}
        self._channels: dict[str, dict] = {}
        self._messages: dict[str, dict[str, dict]] = {}  # channel -> ts -> message
        # channel -> thread ts -> its replies' ts: a reply then costs its thread's size, not its
        # channel's (a soak stores hundreds of thousands of threads, hundreds a channel).
        self._replies: dict[str, dict[str, dict[str, None]]] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._gates: dict[str, list[Gate]] = {}
        self.time_scale = 1.0  # rate-limit windows are multiplied by it
        self.rate_limited: list[ApiCall] = []  # every call answered 429
        self._enforce = False
        self._rate_log: dict[tuple[str, ...], deque[float]] = {}
        self._inject_every = 0
        self._inject_methods: set[str] = set()
        self._inject_count = 0
        self._streaming_refused: set[str] = set()
        self._last_micros = 0
        self._tickets: set[str] = set()
        self._sockets: list[tuple[web.Request, web.WebSocketResponse]] = []
        self._pending_acks: dict[str, asyncio.Future[dict]] = {}
        self._stalled: dict[web.WebSocketResponse, bool] = {}  # -> whether writes to it are lost
        self._retry_waits: tuple[float, ...] = ()
        self._events_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self.add_user(bot_user_id, "supportbot", "Support Bot", is_bot=True)
        self.add_user("U1", "user1", "Test User")  # the default author of user messages

    # ----- lifecycle -----

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        # A big listen backlog: Slack does not refuse a burst of new connections (aiohttp's 128 would
        # drop some of a cold burst's, and each dropped one waits a second for its retry).
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096).start()
        self.port = self._runner.addresses[0][1]
        # No cap on connections: Slack delivers hundreds of events at once without queueing them.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(self) -> None:
        """Close sockets and the server; refuse reconnections meanwhile."""
        self._stopping = True
        for request, ws in list(self._sockets):
            if ws in self._stalled and request.transport is not None:
                request.transport.abort()  # no close handshake over a connection that reads nothing
            else:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        self._sockets.clear()
        for future in self._pending_acks.values():
            future.cancel()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # ----- world state -----

    def add_user(
        self,
        user_id: str,
        display_name: str,
        real_name: str | None = None,
        team: str | None = None,
        is_bot: bool = False,
    ) -> None:
        real_name = real_name or display_name
        team = team or self.team_id
        self._users[user_id] = {
            "id": user_id,
            "team_id": team,
            "name": display_name.lower().replace(" ", "."),
            "deleted": False,
            "real_name": real_name,
            "is_bot": is_bot,
            "is_app_user": False,
            "tz": "Europe/London",
            "profile": {
                "display_name": display_name,
                "display_name_normalized": display_name,
                "real_name": real_name,
                "real_name_normalized": real_name,
                "team": team,
            },
        }

    def add_channel(
        self,
        channel_id: str,
        kind: str = "channel",
        team: str | None = None,
        *,
        name: str | None = None,
        user: str | None = None,
    ) -> None:
        """Declare a conversation; `user` is the other party of an im."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self._channels[channel_id] = {
            "id": channel_id,
            "kind": kind,
            "team": team or self.team_id,
            "name": name or channel_id.lower(),
            "user": user or "U1",
        }

    def messages(self, channel: str) -> list[dict]:
        """All stored messages of a channel (top level and replies) in ts order."""
        return sorted(self._messages.get(channel, {}).values(), key=lambda m: Decimal(m["ts"]))

    def message(self, channel: str, ts: str) -> dict | None:
        """A stored message as it is now, or None."""
        return self._messages.get(channel, {}).get(ts)

    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        """The parent (when stored) and its replies, in ts order."""
        stored = self._messages.get(channel, {})
        members = [stored[ts] for ts in self._replies.get(channel, {}).get(thread_ts, {}) if ts in stored]
        if (parent := stored.get(thread_ts)) is not None:
            members.append(parent)
        return sorted(members, key=lambda m: Decimal(m["ts"]))

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[dict]:
        """Stored messages the bot posted through the API, current versions.

        thread_ts=None: all of the channel; "top": only those outside threads;
        a ts: the bot's replies in that thread (a parent the bot posted is not one).
        """
        posted = {
            call.response["ts"]
            for call in self.calls
            if call.method in POSTING_METHODS and call.response.get("ok")
        }
        found = [m for m in self.messages(channel) if m["ts"] in posted]
        if thread_ts == "top":
            return [m for m in found if m.get("thread_ts", m["ts"]) == m["ts"]]
        if thread_ts is not None:
            return [m for m in found if m.get("thread_ts") == thread_ts != m["ts"]]
        return found

    def seed_message(
        self,
        channel: str,
        text: str,
        user: str = "U1",
        thread_ts: str | None = None,
        ts: str | None = None,
        bot: bool = False,
    ) -> str:
        """Store history without delivering any event; returns the message's ts."""
        author = self.bot_user_id if bot else user
        msg = self._add_message(channel, author, text=text, thread_ts=thread_ts, ts=ts, bot=bot)
        return msg["ts"]

    def calls_to(self, method: str) -> list[ApiCall]:
        return [call for call in self.calls if call.method == method]

    def gate(
        self, method: str, when: Callable[[dict], bool] | None = None, *, answered: bool = False, **match: str
    ) -> Gate:
        """Hold calls to `method` whose arguments include `match` (all of them, with none) and
        satisfy `when` until the gate's `opened` is set: a call to Slack that takes as long as the
        test wants. `answered`: Slack carries the call out at once, and only its answer is held (a
        read that shows what was there before a change made while its answer is on its way)."""
        gate = Gate(match, when, answered=answered)
        self._gates.setdefault(method, []).append(gate)
        return gate

    def fail_next(
        self,
        method: str,
        error: str = "internal_error",
        status: int = 200,
        retry_after: float | None = None,
        times: int = 1,
        drop: bool = False,
        after: bool = False,
        body: str | None = None,
        body_type: str = "text/html",
    ) -> None:
        """Make the next `times` calls to `method` fail; status 429 means "ratelimited". With
        `drop`, the connection is cut with no answer at all, as a failing network does. With
        `after`, the call is carried out first and only its answer is lost (cut, or the error
        Slack gives when it fails partway: a 5xx, `internal_error`). `body`: the answer is that
        text as an HTML page, as a proxy in front of Slack sends with a 502 (or as `body_type`)."""
        fault = _Fault(error, status, retry_after, drop, after, body, body_type)
        self._faults.setdefault(method, []).extend(fault for _ in range(times))

    def clear_faults(self) -> None:
        """Forget the faults `fail_next` queued and no call has met yet."""
        self._faults.clear()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the tests' vocabulary, not a cancel scope
        what: str | None = None,
    ) -> None:
        """Poll `predicate` until true; on timeout fail with what the bot did lately."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or self._describe(predicate)}\n"
                    f"{self._summary()}"
                )
            await asyncio.sleep(0.02)

    async def wait_for_bot_messages(
        self,
        channel: str,
        thread_ts: str | None = None,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[dict]:
        """Wait until the bot has posted `count` messages there (see bot_messages), none of them
        still streaming."""

        def arrived() -> bool:
            found = self.bot_messages(channel, thread_ts)
            return len(found) >= count and not any(m.get("streaming") for m in found)

        await self.wait_for(
            arrived, timeout, what=f"{count} bot message(s) in {channel} (thread_ts={thread_ts})"
        )
        return self.bot_messages(channel, thread_ts)

    # ----- streaming and rate limits -----

    def stream_states(self, channel: str, ts: str) -> list[str]:
        """Every text a streamed message showed, in order (start, each append, stop)."""
        return list(self._find(channel, ts).get("stream_states", []))

    def refuse_streaming(self, *kinds: str) -> None:
        """chat.startStream answers channel_type_not_supported in these kinds of conversation."""
        self._streaming_refused |= set(kinds)

    def press_stop(self, channel: str, ts: str) -> None:
        """A user stops a streaming message: later appends get `stopped_by_user`."""
        msg = self._find(channel, ts)
        msg["stopped_by_user"] = True
        msg["streaming"] = False

    def end_stream(self, channel: str, ts: str) -> None:
        """Slack ends a stream on its own (as after a long pause): appends get
        `message_not_in_streaming_state`."""
        self._find(channel, ts)["streaming"] = False

    def enforce_rate_limits(self, time_scale: float = 1.0) -> None:
        """Answer 429 past each method's budget; windows are Slack's times `time_scale`."""
        self._enforce = True
        self.time_scale = time_scale

    def inject_429s(self, every: int, methods: tuple[str, ...] | None = None) -> None:
        """Answer every `every`-th call to `methods` (default: all that post or edit) with 429."""
        self._inject_every = every
        self._inject_methods = set(methods or (*POSTING_METHODS, "chat.appendStream", "chat.stopStream",
                                               "chat.update"))  # fmt: skip

    def rate_limit_for(self, method: str, args: dict) -> tuple[tuple[str, ...], int, float] | None:
        """(bucket, calls, window seconds) of a call, before time_scale; None when unlimited."""
        if method == "chat.postMessage":
            return (method, str(args.get("channel"))), 1, 1.0
        if method == "assistant.threads.setStatus":
            return (method, str(args.get("channel_id")), str(args.get("thread_ts"))), 1, 1.0
        tier = METHOD_TIERS.get(method)
        if tier is None:
            return None
        return (method, self.team_id), TIER_CALLS[tier], 60.0

    def _check_rate(self, method: str, args: dict) -> float | None:
        """Seconds to wait when this call is past its budget; counts it otherwise."""
        if self._inject_every and method in self._inject_methods:
            self._inject_count += 1
            if self._inject_count % self._inject_every == 0:
                return 1.0 * self.time_scale
        if not self._enforce:
            return None
        limit = self.rate_limit_for(method, args)
        if limit is None:
            return None
        bucket, calls, window = limit
        window *= self.time_scale
        now = time.monotonic()
        log = self._rate_log.setdefault(bucket, deque())
        while log and log[0] <= now - window:
            log.popleft()
        if len(log) >= calls:
            return log[0] + window - now
        log.append(now)
        return None

    # ----- users acting -----

    async def post_user_message(
        self,
        channel: str,
        text: str,
        user: str = "U1",
        thread_ts: str | None = None,
        team: str | None = None,
        channel_type: str | None = None,
        deliver_mention: bool = True,
    ) -> str:
        """Store a user's message and deliver `message` (and `app_mention`) events."""
        event = self.user_message_event(channel, text, user, thread_ts, team, channel_type)
        await self.deliver_event(event)
        if deliver_mention and event["channel_type"] != "im" and f"<@{self.bot_user_id}>" in text:
            await self.deliver_event(self.mention_twin(event))
        return event["ts"]

    @staticmethod
    def mention_twin(event: dict) -> dict:
        """The `app_mention` event Slack sends beside a channel message's `message` event."""
        return {k: v for k, v in event.items() if k != "channel_type"} | {"type": "app_mention"}

    def user_message_event(
        self,
        channel: str,
        text: str,
        user: str = "U1",
        thread_ts: str | None = None,
        team: str | None = None,
        channel_type: str | None = None,
    ) -> dict:
        """Store a user's message; its `message` event, for the test to deliver."""
        kind = self._channel(channel)["kind"]
        extra = {"client_msg_id": str(uuid.uuid4())} | ({"team": team} if team else {})
        msg = self._add_message(channel, user, text=text, thread_ts=thread_ts, **extra)
        where = {"channel": channel, "event_ts": msg["ts"], "channel_type": channel_type or kind}
        return self._public(msg) | where

    async def click_feedback(
        self, channel: str, ts: str, *, user: str = "U1", positive: bool = True
    ) -> Delivery:
        """A user presses a feedback button on a bot message (a block_actions interaction)."""
        return await self.deliver_interaction(self.feedback_click(channel, ts, user=user, positive=positive))

    async def deliver_interaction(self, payload: dict) -> Delivery:
        """Deliver an interaction payload, whatever it holds, as Slack does in the current mode."""
        prepared = self._prepare(payload, self._events_url, None, None, kind="interactive")
        return await self.send_prepared(prepared)

    def feedback_click(self, channel: str, ts: str, *, user: str = "U1", positive: bool = True) -> dict:
        """The block_actions payload of a press on a bot message's feedback button."""
        msg = self._find(channel, ts)
        for block in msg.get("blocks") or []:
            if block.get("type") != "context_actions":
                continue
            for element in block.get("elements", []):
                if element.get("type") == "feedback_buttons":
                    button = element["positive_button" if positive else "negative_button"]
                    break
            else:
                continue
            break
        else:
            raise AssertionError(f"message {ts} has no feedback buttons: {msg.get('blocks')}")
        person = self._users.get(user, {})
        container = {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False}
        if msg.get("thread_ts"):
            container["thread_ts"] = msg["thread_ts"]
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": person.get("name", user), "team_id": self.team_id},
            "api_app_id": self.app_id,
            "token": "emulator-verification-token",
            "container": container,
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:10]}",
            "team": {"id": self.team_id, "domain": "emulated"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": self._channel(channel)["name"]},
            "message": self._public(msg),
            "state": {"values": {}},
            "response_url": f"http://127.0.0.1:{self.port}/response/{uuid.uuid4().hex}",
            "actions": [
                {
                    "type": "feedback_buttons",
                    "action_id": element.get("action_id", ""),
                    "block_id": block.get("block_id", ""),
                    "value": button["value"],
                    "text": button["text"],
                    "action_ts": self._next_ts(),
                }
            ],
        }
        return payload

    async def edit_message(self, channel: str, ts: str, new_text: str) -> None:
        """Edit a stored message and deliver the hidden message_changed event; and, as Slack does
        when the edited text mentions the bot outside a DM, an `app_mention` with `edited`."""
        await self.deliver_event(self.edited_event(channel, ts, new_text))
        if self._channel(channel)["kind"] != "im" and f"<@{self.bot_user_id}>" in new_text:
            msg = self._public(self._find(channel, ts))
            await self.deliver_event(msg | {"type": "app_mention", "channel": channel, "event_ts": msg["ts"]})

    def edited_event(self, channel: str, ts: str, new_text: str) -> dict:
        """Edit a stored message; its hidden message_changed event, for the test to deliver."""
        msg = self._find(channel, ts)
        previous = self._edit(msg, {"text": new_text})
        event = self._hidden_event(channel, "message_changed", message=self._public(msg))
        return event | {"previous_message": previous}

    async def delete_message(self, channel: str, ts: str) -> None:
        """Delete a stored message and deliver the hidden message_deleted event."""
        previous = self._public(self._find(channel, ts))
        self._remove(channel, ts)
        event = self._hidden_event(channel, "message_deleted", deleted_ts=ts)
        await self.deliver_event(event | {"previous_message": previous})

    def _hidden_event(self, channel: str, subtype: str, **fields: Any) -> dict:
        """A message event of the kind clients do not display (edits, deletions)."""
        event_ts = self._next_ts()
        kind = self._channel(channel)["kind"]
        head = {"type": "message", "subtype": subtype, "hidden": True, "channel": channel}
        return head | {"channel_type": kind, "ts": event_ts, "event_ts": event_ts, **fields}

    # ----- event delivery -----

    def use_http(self, events_url: str) -> None:
        """Deliver events by signed POST to the bot's request URL."""
        self._events_url = events_url

    def use_socket(self) -> None:
        """Deliver events as Socket Mode envelopes (the default)."""
        self._events_url = None

    def retry_failed_deliveries(self, waits: tuple[float, ...] = SLACK_RETRY_WAITS) -> None:
        """From now on, send an event delivery that failed again, as Slack does: after each of
        `waits` in turn until one is acknowledged. Interactions are not sent again (Slack shows
        the person an error instead). `send_prepared` returns the last attempt; every attempt
        is in `deliveries`."""
        self._retry_waits = tuple(waits)

    def deliver_event(
        self,
        event: dict,
        *,
        team: str | None = None,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
    ) -> Coroutine[Any, Any, Delivery]:
        """Wrap `event` in an event_callback and deliver it once; await it for the Delivery.

        The route (the socket, or the URL use_http set last) is fixed when this is called,
        so deliveries gathered later still go where the test pointed them.
        """
        prepared = self.prepare_event(
            event, team=team, event_id=event_id, retry_num=retry_num, retry_reason=retry_reason
        )
        return self.send_prepared(prepared)

    def prepare_event(
        self,
        event: dict,
        *,
        team: str | None = None,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
    ) -> PreparedDelivery:
        """deliver_event's first half: the delivery built, serialized and signed, to the route
        set now; `send_prepared` writes it. A load generator prepares a burst ahead of time."""
        team = team or self.team_id
        body = {
            "token": "emulator-verification-token",
            "team_id": team,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:12].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": team, "user_id": self.bot_user_id, "is_bot": True, "is_enterprise_install": False}
            ],
            "is_ext_shared_channel": False,
        }
        return self._prepare(body, self._events_url, retry_num, retry_reason)

    def sign(self, body: bytes, timestamp: int) -> dict[str, str]:
        """The headers Slack signs a request with (v0, HMAC-SHA256)."""
        base = f"v0:{timestamp}:".encode() + body
        digest = hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}

    async def send_http(
        self,
        body: bytes,
        headers: dict | None = None,
        sign: bool = True,
        timestamp: int | None = None,
        path: str = "/slack/events",
    ) -> tuple[int, str]:
        """POST raw bytes to the bot's host (see use_http); `headers` override the defaults."""
        if self._events_url is None:
            raise RuntimeError("call use_http(events_url) first")
        url = str(URL(self._events_url).with_path(path))
        sent = self._http_headers(body, headers, sign, timestamp)
        return await self._post(url, body, sent)

    def _http_headers(
        self, body: bytes, headers: dict | None = None, sign: bool = True, timestamp: int | None = None
    ) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        sent = {"Content-Type": "application/json"}
        sent |= self.sign(body, timestamp) if sign else {}
        return sent | (headers or {})

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        assert self._session is not None, "call start() first"
        timeout = aiohttp.ClientTimeout(total=self.http_timeout)
        async with self._session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            return resp.status, await resp.text()

    def _prepare(
        self,
        body: dict,
        url: str | None,
        retry_num: int | None,
        retry_reason: str | None,
        kind: str = "events_api",
    ) -> PreparedDelivery:
        event_id = body.get("event_id", "")
        if url is None:
            envelope_id = str(uuid.uuid4())
            envelope = {
                "envelope_id": envelope_id,
                "type": kind,
                "accepts_response_payload": False,
                "retry_attempt": retry_num or 0,
                "retry_reason": retry_reason or "",
                "payload": body,
            }
            data = json.dumps(envelope).encode()
            return PreparedDelivery(None, data, {}, event_id, envelope_id, retry_num or 0, kind)
        headers = {}
        if retry_num is not None:
            headers = {
                "X-Slack-Retry-Num": str(retry_num),
                "X-Slack-Retry-Reason": retry_reason or "http_timeout",
            }
        data = json.dumps(body).encode()
        if kind == "interactive":
            # Interactions arrive as a form with one field, `payload`, holding the JSON.
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            data = urlencode({"payload": json.dumps(body)}).encode()
        signed = self._http_headers(data, headers)
        return PreparedDelivery(url, data, signed, event_id, "", retry_num or 0, kind)

    async def send_prepared(
        self, prepared: PreparedDelivery, waits: tuple[float, ...] | None = None
    ) -> Delivery:
        """Write a prepared delivery and wait for the bot's answer (HTTP) or ack (Socket Mode);
        send it again while it fails, after each of `waits` (default: retry_failed_deliveries')."""
        delivery = await self._send_once(prepared)
        for wait in (self._retry_waits if waits is None else waits) if prepared.kind == "events_api" else ():
            if delivery.acked:
                break
            await asyncio.sleep(wait)
            prepared = self.redelivery(prepared, delivery)
            delivery = await self._send_once(prepared)
        return delivery

    @property
    def retry_waits(self) -> tuple[float, ...]:
        """The waits before each retry of a failed event delivery (retry_failed_deliveries)."""
        return self._retry_waits

    def redelivery(self, prepared: PreparedDelivery, failed: Delivery) -> PreparedDelivery:
        """Slack's next attempt at a delivery that `failed`: its retry number and reason set."""
        return self._again(prepared, self._failure_reason(prepared, failed))

    async def _send_once(self, prepared: PreparedDelivery) -> Delivery:
        if prepared.url is None:
            status, text, acked, sent_at = await self._send_envelope(prepared)
        else:
            sent_at = time.monotonic()
            try:
                status, text = await self._post(prepared.url, prepared.data, prepared.headers)
                acked = 200 <= status < 300
            except (TimeoutError, aiohttp.ClientError):
                status, text, acked = None, "", False
        elapsed = time.monotonic() - sent_at
        delivery = Delivery(status, text, acked, elapsed, prepared.event_id, sent_at, prepared.retry_attempt)
        self.deliveries.append(delivery)
        return delivery

    def _failure_reason(self, prepared: PreparedDelivery, delivery: Delivery) -> str:
        """The retry reason for a failed delivery (the Events API's names)."""
        if delivery.status is not None:
            return "http_error"
        timeout = self.ack_timeout if prepared.url is None else self.http_timeout
        return "http_timeout" if delivery.elapsed >= timeout else "connection_failed"

    def _again(self, prepared: PreparedDelivery, reason: str) -> PreparedDelivery:
        """The next retry of a delivery: a new envelope with the retry's number and reason, or
        the same body with Slack's retry headers, signed anew."""
        attempt = prepared.retry_attempt + 1
        if prepared.url is None:
            envelope = json.loads(prepared.data)
            envelope_id = str(uuid.uuid4())
            envelope |= {"envelope_id": envelope_id, "retry_attempt": attempt, "retry_reason": reason}
            data = json.dumps(envelope).encode()
            return dataclasses.replace(prepared, data=data, envelope_id=envelope_id, retry_attempt=attempt)
        retry = {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": reason}
        headers = self._http_headers(prepared.data, retry)
        return dataclasses.replace(prepared, headers=headers, retry_attempt=attempt)

    async def _send_envelope(self, prepared: PreparedDelivery) -> tuple[None, str, bool, float]:
        """(status, ack payload, acked, when the envelope was written)."""
        ack_future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._pending_acks[prepared.envelope_id] = ack_future
        sent_at = time.monotonic()
        try:
            # A delivery during a reconnection waits for the next socket, as Slack queues it.
            async with asyncio.timeout(self.ack_timeout):
                while not self._sockets:  # noqa: ASYNC110 - sockets come and go; polling is simplest
                    await asyncio.sleep(0.01)
                sent_at = time.monotonic()
                ws = self._envelope_socket()
                if not self._stalled.get(ws, False):
                    await ws.send_str(prepared.data.decode())
                ack = await ack_future
        except (TimeoutError, ConnectionError, RuntimeError):
            return None, "", False, sent_at
        finally:
            self._pending_acks.pop(prepared.envelope_id, None)
        return None, json.dumps(ack["payload"]) if ack.get("payload") else "", True, sent_at

    def _envelope_socket(self) -> web.WebSocketResponse:
        if not self.spread_envelopes:
            return self._sockets[-1][1]
        self._next_socket += 1
        return self._sockets[self._next_socket % len(self._sockets)][1]

    # ----- Socket Mode connection -----

    @property
    def open_sockets(self) -> int:
        """Socket Mode connections open now (one per bot process)."""
        return len(self._sockets)

    async def wait_for_socket(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until a Socket Mode client is connected and greeted."""
        await self.wait_for(lambda: bool(self._sockets), timeout, what="a Socket Mode connection")

    async def drop_socket(self, graceful: bool = False) -> None:
        """Cut the current connection: no close frame (a network failure) unless graceful."""
        if not self._sockets:
            raise AssertionError("no Socket Mode connection to drop")
        request, ws = self._sockets.pop()
        if graceful:
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        elif request.transport is not None:
            request.transport.abort()

    def stall_socket(self, *, lose_writes: bool = False) -> None:
        """The current connection stops carrying the client's frames, as a half-open one does:
        its acks and pings go unread and unanswered (the client's heartbeat gives up on it and
        it connects again). What the emulator writes still reaches the client, unless
        `lose_writes`. The connection stays the one events go to until a new one opens."""
        if not self._sockets:
            raise AssertionError("no Socket Mode connection to stall")
        request, ws = self._sockets[-1]
        assert request.transport is not None
        request.transport.pause_reading()
        self._stalled[ws] = lose_writes

    async def send_socket_text(self, text: str) -> None:
        """Write one text frame, whatever it holds, on the current connection."""
        if not self._sockets:
            raise AssertionError("no Socket Mode connection to write to")
        await self._sockets[-1][1].send_str(text)

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the client to reconnect, as Slack does before recycling a socket."""
        if not self._sockets:
            raise AssertionError("no Socket Mode connection to send a disconnect to")
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "emulator"}}
        await self._sockets[-1][1].send_json(message)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self._stopping or request.query.get("ticket") not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        # autoping echoes the client's "sdk-ping-pong:<time>" pings, its liveness signal.
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        self.socket_connections += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets) + 1,
                "debug_info": {"host": "emulator", "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }
        )
        entry = (request, ws)
        self._sockets.append(entry)
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_socket_text(msg.data)
        finally:
            if entry in self._sockets:
                self._sockets.remove(entry)
            self._stalled.pop(ws, None)
        return ws

    def _on_socket_text(self, data: str) -> None:
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            if isinstance(message, dict) and "envelope_id" in message:
                self.acks.append(message)
                future = self._pending_acks.get(message["envelope_id"])
                if future is not None and not future.done():
                    future.set_result(message)

    # ----- Web API plumbing -----

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict = {}
        token = None
        status, headers = 200, {}
        try:
            args = await self._read_args(request)
            token = self._token(request, args)
            handler = self.handlers.get(method)
            if handler is None:
                raise ApiError("unknown_method")
            self._check_token(method, token)
            wait = self._check_rate(method, args)
            if wait is not None:
                status = 429
                headers["Retry-After"] = (
                    str(math.ceil(wait)) if self.time_scale >= 1 else f"{max(wait, 0.001):.3f}"
                )
                raise ApiError("ratelimited")
            held = [
                gate for gate in self._gates.get(method, ()) if gate.admits(args) and not gate.opened.is_set()
            ]
            for gate in held:
                if not gate.answered:
                    await gate.held()
            queued = self._faults.get(method)
            if queued:
                fault = queued.pop(0)
                if fault.drop and request.transport is not None:
                    done = {"ok": True} | handler(args) if fault.after else {}
                    self.calls.append(ApiCall(method, args, token, done, 0, time.monotonic()))
                    request.transport.abort()
                    return web.Response(status=500)  # never written: the connection is gone
                if fault.after or fault.body is not None:
                    # The call as carried out (or not) is what `calls` records; the bot gets the
                    # fault. A call Slack refuses on its own (a bare stop of an ended stream) is
                    # refused as usual, the fault spent: only a call carried out gets it.
                    done = (
                        {"ok": True} | handler(args) if fault.after else {"ok": False, "error": fault.error}
                    )
                    status = fault.status
                    self.calls.append(ApiCall(method, args, token, done, status, time.monotonic()))
                    if fault.body is not None:
                        return web.Response(status=status, text=fault.body, content_type=fault.body_type)
                    return web.json_response({"ok": False, "error": fault.error}, status=status)
                status = fault.status
                if status == 429:
                    headers["Retry-After"] = str(math.ceil(fault.retry_after or 1))
                raise ApiError("ratelimited" if status == 429 else fault.error)
            response = {"ok": True} | handler(args)
            for gate in held:
                if gate.answered:
                    await gate.held()
        except ApiError as exc:
            response = {"ok": False, "error": str(exc)}
        call = ApiCall(method, args, token, response, status, time.monotonic())
        self.calls.append(call)
        if status == 429:
            self.rate_limited.append(call)
        return web.json_response(response, status=status, headers=headers)

    @staticmethod
    async def _read_args(request: web.Request) -> dict:
        # slack_sdk puts arguments in the query (GET, and POST with params=), a form or JSON.
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError as exc:
                    raise ApiError("invalid_json") from exc
                if not isinstance(body, dict):
                    raise ApiError("invalid_json")
                args |= body
            else:
                args |= dict(await request.post())
        for key in JSON_ARGS:
            if isinstance(args.get(key), str):
                with contextlib.suppress(ValueError):
                    args[key] = json.loads(args[key])
        return args

    @staticmethod
    def _token(request: web.Request, args: dict) -> str | None:
        body_token = args.pop("token", None)
        auth = request.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else body_token

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise ApiError("not_authed")
        expected = self.app_token if method in APP_TOKEN_METHODS else self.bot_token
        if token != expected:
            raise ApiError("invalid_auth")

    # ----- messages -----

    def _channel(self, channel_id: Any) -> dict:
        """A declared channel, or one implied by its id prefix (C, G, D)."""
        if not isinstance(channel_id, str) or not channel_id:
            raise ApiError("channel_not_found")
        if channel_id not in self._channels:
            kind = KIND_BY_PREFIX.get(channel_id[0])
            if kind is None:
                raise ApiError("channel_not_found")
            self.add_channel(channel_id, kind)
        return self._channels[channel_id]

    def _find(self, channel: str, ts: Any) -> dict:
        self._channel(channel)
        msg = self._messages.get(channel, {}).get(ts)
        if msg is None:
            raise ApiError("message_not_found")
        return msg

    def _next_ts(self) -> str:
        self._last_micros = max(time.time_ns() // 1000, self._last_micros + 1)
        seconds, micros = divmod(self._last_micros, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def _root_ts(self, channel: str, ts: str) -> str:
        """The thread a ts belongs to: replying to a reply lands in its parent's thread."""
        msg = self._messages.get(channel, {}).get(ts)
        return msg.get("thread_ts", ts) if msg else ts

    def _add_message(
        self,
        channel: str,
        user: str,
        *,
        text: str,
        thread_ts: str | None = None,
        ts: str | None = None,
        bot: bool = False,
        **extra: Any,
    ) -> dict:
        self._channel(channel)
        stored = self._messages.setdefault(channel, {})
        if ts is None:
            ts = self._next_ts()
        elif ts in stored:
            raise ValueError(f"{channel} already has a message with ts {ts}")
        else:
            self._last_micros = max(self._last_micros, _micros(ts))
        author = self._users.get(user, {})
        msg: dict[str, Any] = {
            "type": "message",
            "user": user,
            "text": text,
            "ts": ts,
            "team": author.get("team_id", self.team_id),
        }
        if bot:
            msg |= {"bot_id": self.bot_id, "app_id": self.app_id}
        if thread_ts:
            thread_ts = self._root_ts(channel, thread_ts)
            parent = stored.get(thread_ts)
            msg |= {"thread_ts": thread_ts, "parent_user_id": (parent or msg)["user"]}
        msg |= extra
        stored[ts] = msg
        if thread_ts:
            if thread_ts != ts:
                self._replies.setdefault(channel, {}).setdefault(thread_ts, {})[ts] = None
            self._refresh_thread(channel, thread_ts)
        return msg

    def _refresh_thread(self, channel: str, thread_ts: str) -> None:
        """Recompute the parent's reply fields from the stored replies."""
        parent = self._messages.get(channel, {}).get(thread_ts)
        if parent is None:
            return
        replies = [m for m in self.thread(channel, thread_ts) if m["ts"] != thread_ts]
        for key in THREAD_KEYS:
            parent.pop(key, None)
        if replies:
            users = list(dict.fromkeys(m["user"] for m in replies))
            parent |= {
                "thread_ts": thread_ts,
                "reply_count": len(replies),
                "reply_users": users,
                "reply_users_count": len(users),
                "latest_reply": replies[-1]["ts"],
            }

    def _remove(self, channel: str, ts: str) -> None:
        msg = self._messages[channel].pop(ts)
        if (root := msg.get("thread_ts", ts)) != ts:
            self._replies.get(channel, {}).get(root, {}).pop(ts, None)
        if msg.get("reply_count"):
            # Slack keeps a deleted parent's replies under a tombstone.
            self._messages[channel][ts] = {
                "type": "message",
                "subtype": "tombstone",
                "hidden": True,
                "user": "USLACKBOT",
                "text": "This message was deleted.",
                "ts": ts,
            }
        self._refresh_thread(channel, msg.get("thread_ts", ts))

    def _edit(self, msg: dict, changes: dict) -> dict:
        """Apply `changes`, keeping the previous version in msg["edits"]; returns it."""
        previous = self._public(msg)
        msg.setdefault("edits", []).append(previous)
        msg |= changes
        msg["edited"] = {"user": msg["user"], "ts": self._next_ts()}
        return previous

    def _read_back(self, msg: dict) -> dict:
        """A message as conversations.history / .replies give it. With `render_markdown`, a
        message of Markdown comes back as Slack plausibly renders it: a rich_text block with
        links as link elements and no emphasis marks, `text` in mrkdwn (`*bold*`, `<url|label>`,
        `&amp;`), and no markdown block or its block id; other blocks (the buttons) as sent."""
        public = self._public(msg)
        blocks = public.get("blocks") or []
        markdown = next((b.get("text") for b in blocks if b.get("type") == "markdown"), None)
        if markdown is None and msg.get("markdown"):
            markdown = public.get("text")
        if not self.render_markdown or not markdown:
            return public
        elements: list[dict] = []
        at = 0
        for link in _MARKDOWN_LINK.finditer(markdown):
            elements.append({"type": "text", "text": _unmarked(markdown[at : link.start()])})
            elements.append({"type": "link", "url": link["url"], "text": link["label"]})
            at = link.end()
        elements.append({"type": "text", "text": _unmarked(markdown[at:])})
        section = {"type": "rich_text_section", "elements": [e for e in elements if e.get("text")]}
        rich = {"type": "rich_text", "block_id": uuid.uuid4().hex[:5], "elements": [section]}
        public["blocks"] = [rich] + [b for b in blocks if b.get("type") != "markdown"]
        escaped = markdown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        public["text"] = _MARKDOWN_LINK.sub(r"<\g<url>|\g<label>>", escaped).replace("**", "*")
        return public

    @staticmethod
    def _public(msg: dict) -> dict:
        return copy.deepcopy({k: v for k, v in msg.items() if k not in PRIVATE_KEYS})

    @staticmethod
    def _check_content(args: dict) -> None:
        text, blocks, markdown = args.get("text"), args.get("blocks"), args.get("markdown_text")
        if markdown and (text or blocks):
            raise ApiError("markdown_text_conflict")
        if not (text or blocks or markdown or args.get("attachments")):
            raise ApiError("no_text")
        if blocks is not None and not isinstance(blocks, list):
            raise ApiError("invalid_blocks_format")
        if len(text or "") > MAX_TEXT or len(markdown or "") > MAX_MARKDOWN_TEXT:
            raise ApiError("msg_too_long")
        SlackEmulator._check_blocks(blocks or [])

    @staticmethod
    def _check_blocks(blocks: list) -> None:
        """The limits Slack puts on the blocks the bot uses."""
        if len(blocks) > 50:
            raise ApiError("invalid_blocks")
        markdown = 0
        block_ids = [b["block_id"] for b in blocks if isinstance(b, dict) and "block_id" in b]
        if any(not isinstance(i, str) or not 0 < len(i) <= 255 for i in block_ids):
            raise ApiError("invalid_blocks")
        if len(set(block_ids)) < len(block_ids):
            raise ApiError("invalid_blocks")  # block ids must be unique within a message
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "markdown":
                markdown += len(block.get("text") or "")
            elif kind == "section":
                if len((block.get("text") or {}).get("text") or "") > 3000:
                    raise ApiError("invalid_blocks")
            elif kind == "context_actions":
                elements = block.get("elements") or []
                if not elements or len(elements) > 5:
                    raise ApiError("invalid_blocks")
                for element in elements:
                    if element.get("type") == "feedback_buttons" and not (
                        element.get("positive_button", {}).get("value")
                        and element.get("negative_button", {}).get("value")
                    ):
                        raise ApiError("invalid_blocks")
            elif kind is None:
                raise ApiError("invalid_blocks")
        if markdown > MAX_MARKDOWN_TEXT:
            raise ApiError("msg_blocks_too_long")

    # ----- method handlers: args in, response fields out (or ApiError) -----

    def _auth_test(self, args: dict) -> dict:
        return {
            "url": "https://emulated.slack.com/",
            "team": "Emulated Workspace",
            "user": self._users[self.bot_user_id]["name"],
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _users_info(self, args: dict) -> dict:
        user = self._users.get(args.get("user", ""))
        if user is None:
            raise ApiError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _conversations_info(self, args: dict) -> dict:
        channel = self._channel(args.get("channel"))
        kind = channel["kind"]
        info = {
            "id": channel["id"],
            "is_channel": kind == "channel",
            "is_group": kind == "group",
            "is_im": kind == "im",
            "is_mpim": kind == "mpim",
            "is_private": kind != "channel",
            "is_archived": False,
            "is_ext_shared": channel["team"] != self.team_id,
            "context_team_id": channel["team"],
            "created": 1700000000,
        }
        info |= {"user": channel["user"]} if kind == "im" else {"name": channel["name"]}
        return {"channel": info}

    def _conversations_replies(self, args: dict) -> dict:
        channel = args.get("channel")
        self._channel(channel)
        root = self._root_ts(channel, args.get("ts", ""))
        thread = self.thread(channel, root)
        if not thread or thread[0]["ts"] != root:
            raise ApiError("thread_not_found")
        try:
            limit = min(max(int(args.get("limit") or 1000), 1), 1000)
        except ValueError as exc:
            raise ApiError("invalid_arguments") from exc
        start = 0
        if args.get("cursor"):
            # The cursor names the first ts of the next page; compare, as that one may be gone.
            first = _decode_cursor(args["cursor"])
            start = next((i for i, m in enumerate(thread) if Decimal(m["ts"]) >= first), len(thread))
        if args.get("oldest"):
            # The parent always comes first; replies only after `oldest` (or at it, `inclusive`).
            after = _timeline_filter(args)
            thread = thread[:1] + [m for m in thread[1:] if after(m)]
        page, rest = thread[start : start + limit], thread[start + limit :]
        next_cursor = _encode_cursor(rest[0]["ts"]) if rest else ""
        return {
            "messages": [self._read_back(m) for m in page],
            "has_more": bool(next_cursor),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _conversations_history(self, args: dict) -> dict:
        """The channel's own timeline (no thread replies), newest first, within oldest/latest."""
        channel = args.get("channel")
        self._channel(channel)
        try:
            limit = min(max(int(args.get("limit") or 100), 1), 1000)
        except ValueError as exc:
            raise ApiError("invalid_arguments") from exc
        within = _timeline_filter(args)
        top_level = [m for m in self.messages(channel) if m.get("thread_ts", m["ts"]) == m["ts"]]
        timeline = [m for m in reversed(top_level) if within(m)]
        if args.get("cursor"):
            last = _decode_cursor(args["cursor"])
            timeline = [m for m in timeline if Decimal(m["ts"]) <= last]
        page, rest = timeline[:limit], timeline[limit:]
        next_cursor = _encode_cursor(rest[0]["ts"]) if rest else ""
        return {
            "messages": [self._read_back(m) for m in page],
            "has_more": bool(next_cursor),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _chat_post_message(self, args: dict) -> dict:
        channel = args.get("channel")
        self._channel(channel)
        self._check_content(args)
        extra = {k: args[k] for k in ("blocks", "attachments", "metadata") if args.get(k)}
        thread_ts = args.get("thread_ts") or None
        if thread_ts and _truthy(args.get("reply_broadcast")):
            extra["subtype"] = "thread_broadcast"
        text = args.get("text") or args.get("markdown_text") or ""
        msg = self._add_message(channel, self.bot_user_id, text=text, thread_ts=thread_ts, bot=True, **extra)
        msg["markdown"] = bool(args.get("markdown_text"))
        if thread_ts:
            self._clear_status(channel, msg["thread_ts"])
        return {"channel": channel, "ts": msg["ts"], "message": self._public(msg)}

    def _chat_update(self, args: dict) -> dict:
        channel = args.get("channel")
        msg = self._find(channel, args.get("ts"))
        if msg.get("user") != self.bot_user_id:
            raise ApiError("cant_update_message")
        if msg.get("streaming"):
            raise ApiError("streaming_state_conflict")
        self._check_content(args)
        changes = {k: args[k] for k in ("blocks", "attachments", "metadata") if k in args}
        changes["text"] = args.get("text") or args.get("markdown_text") or ""
        self._edit(msg, changes)
        return {"channel": channel, "ts": msg["ts"], "text": msg["text"], "message": self._public(msg)}

    def _chat_start_stream(self, args: dict) -> dict:
        channel = args.get("channel")
        kind = self._channel(channel)["kind"]
        if kind in self._streaming_refused:
            raise ApiError("channel_type_not_supported")
        thread_ts = args.get("thread_ts") or None
        if kind != "im":
            if not args.get("recipient_team_id"):
                raise ApiError("missing_recipient_team_id")
            if not args.get("recipient_user_id"):
                raise ApiError("missing_recipient_user_id")
        elif thread_ts is None:
            raise ApiError("invalid_arguments")  # top-level streams exist only in channels
        text = args.get("markdown_text") or ""
        if len(text) > MAX_MARKDOWN_TEXT:
            raise ApiError("msg_too_long")
        msg = self._add_message(channel, self.bot_user_id, text=text, thread_ts=thread_ts, bot=True)
        msg["streaming"], msg["markdown"] = True, True
        msg["stream_states"] = [text]
        if thread_ts:
            self._clear_status(channel, msg["thread_ts"])
        return {"channel": channel, "ts": msg["ts"]}

    def _streaming_message(self, args: dict) -> dict:
        msg = self._find(args.get("channel"), args.get("ts"))
        if msg.get("user") != self.bot_user_id:
            raise ApiError("message_not_owned_by_app")
        if msg.get("stopped_by_user"):
            raise ApiError("stopped_by_user")
        if not msg.get("streaming"):
            raise ApiError("message_not_in_streaming_state")
        return msg

    def _grow_stream(self, msg: dict, text: str) -> None:
        if len(text) > MAX_MARKDOWN_TEXT or len(msg["text"]) + len(text) > STREAM_CONTENT_LIMIT:
            raise ApiError("msg_too_long")
        msg["text"] += text
        msg["stream_states"].append(msg["text"])

    def _chat_append_stream(self, args: dict) -> dict:
        msg = self._streaming_message(args)
        if not args.get("markdown_text"):
            raise ApiError("no_text")
        self._grow_stream(msg, args["markdown_text"])
        return {"channel": args["channel"], "ts": msg["ts"]}

    def _chat_stop_stream(self, args: dict) -> dict:
        msg = self._streaming_message(args)
        blocks = args.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, list):
                raise ApiError("invalid_blocks_format")
            self._check_blocks(blocks)
        self._grow_stream(msg, args.get("markdown_text") or "")
        if blocks:
            msg["blocks"] = blocks
        msg["streaming"] = False
        return {"channel": args["channel"], "ts": msg["ts"], "message": self._public(msg)}

    def _chat_delete(self, args: dict) -> dict:
        channel = args.get("channel")
        msg = self._find(channel, args.get("ts"))
        if msg.get("user") != self.bot_user_id:
            raise ApiError("cant_delete_message")
        self._remove(channel, msg["ts"])
        return {"channel": channel, "ts": msg["ts"]}

    def _chat_post_ephemeral(self, args: dict) -> dict:
        self._channel(args.get("channel"))
        if args.get("user") not in self._users:
            raise ApiError("user_not_in_channel")
        self._check_content(args)
        return {"message_ts": self._next_ts()}

    def _chat_get_permalink(self, args: dict) -> dict:
        channel = args.get("channel")
        msg = self._find(channel, args.get("message_ts"))
        link = f"https://emulated.slack.com/archives/{channel}/p{msg['ts'].replace('.', '')}"
        if msg.get("thread_ts", msg["ts"]) != msg["ts"]:
            link += f"?thread_ts={msg['thread_ts']}&cid={channel}"
        return {"channel": channel, "permalink": link}

    def _reaction_target(self, args: dict) -> tuple[dict, str]:
        if not args.get("name"):
            raise ApiError("invalid_name")
        if not args.get("timestamp"):
            raise ApiError("no_item_specified")
        return self._find(args.get("channel"), args["timestamp"]), args["name"]

    def _reactions_add(self, args: dict) -> dict:
        msg, name = self._reaction_target(args)
        reactions = msg.setdefault("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None:
            reaction = {"name": name, "users": [], "count": 0}
            reactions.append(reaction)
        if self.bot_user_id in reaction["users"]:
            raise ApiError("already_reacted")
        reaction["users"].append(self.bot_user_id)
        reaction["count"] += 1
        return {}

    def _reactions_remove(self, args: dict) -> dict:
        msg, name = self._reaction_target(args)
        reactions = msg.get("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None or self.bot_user_id not in reaction["users"]:
            raise ApiError("no_reaction")
        reaction["users"].remove(self.bot_user_id)
        reaction["count"] -= 1
        msg["reactions"] = [r for r in reactions if r["count"] > 0]
        if not msg["reactions"]:
            del msg["reactions"]
        return {}

    def _set_status(self, args: dict) -> dict:
        channel = args.get("channel_id")
        self._channel(channel)
        thread_ts = args.get("thread_ts")
        if not thread_ts:
            raise ApiError("invalid_thread_ts")
        if not isinstance(args.get("status"), str):
            raise ApiError("invalid_arguments")  # required; "" clears the status
        self.statuses[(channel, thread_ts)] = args["status"]
        self.status_history.append((channel, thread_ts, args["status"]))
        return {}

    def _clear_status(self, channel: str, thread_ts: str) -> None:
        # Slack clears a thread's status as soon as the app replies in it.
        if self.statuses.get((channel, thread_ts)):
            self.statuses[(channel, thread_ts)] = ""
            self.status_history.append((channel, thread_ts, ""))

    def _apps_connections_open(self, args: dict) -> dict:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}&app_id={self.app_id}"}

    # ----- forgetting -----

    def forget(self, keep_threads: Iterable[tuple[str, str]] = ()) -> None:
        """Forget what has been measured: the call log, deliveries, acks, status history, and
        every message outside `keep_threads` ((channel, thread ts) pairs, parent and replies).

        A long soak calls it between windows: these records grow some 14 KB a streamed turn and
        would otherwise bound how long it can run. Users, channels, statuses still shown and
        rate-limit windows stay. Afterwards `bot_messages` knows only the bot's later posts.
        """
        for log in (self.calls, self.acks, self.deliveries, self.status_history, self.rate_limited):
            log.clear()
        messages: dict[str, dict[str, dict]] = {}
        replies: dict[str, dict[str, dict[str, None]]] = {}
        for channel, root in keep_threads:
            stored = self._messages.get(channel, {})
            thread = self._replies.get(channel, {}).get(root, {})
            kept = {ts: stored[ts] for ts in (root, *thread) if ts in stored}
            messages.setdefault(channel, {}).update(kept)
            if thread:
                replies.setdefault(channel, {})[root] = thread
        self._messages, self._replies = messages, replies
        self.statuses = {where: status for where, status in self.statuses.items() if status}

    # ----- diagnostics -----

    @staticmethod
    def _describe(predicate: Callable[[], bool]) -> str:
        with contextlib.suppress(OSError, TypeError):
            return inspect.getsource(predicate).strip()
        return repr(predicate)

    def _summary(self) -> str:
        calls = [
            f"  {c.method} -> {'ok' if c.response.get('ok') else c.response.get('error')}"
            for c in self.calls[-10:]
        ]
        acked = sum(d.acked for d in self.deliveries)
        return "\n".join(
            [
                f"deliveries: {len(self.deliveries)} ({acked} acked); "
                f"sockets open: {len(self._sockets)}; statuses: {self.statuses}",
                f"last {len(calls)} of {len(self.calls)} API calls:",
                *calls,
            ]
        )
