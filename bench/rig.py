"""The load generator's side: the Slack and OpenAI emulators on 127.0.0.1, users asking questions,
and a reading of the Slack call log that says when each answer became visible.

Every question carries an id (`q00042`). The emulated model answers it with text that starts with
`ANSq00042` and ends with `ENDq00042`, so any Slack call carrying answer text can be traced to its
question, however delivery posts it: one chat.postMessage, chat.postMessage then chat.update, or
chat.startStream / chat.appendStream / chat.stopStream.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from bench.measure import percentiles
from bench.sender import HttpSender, Request, encode
from tests.emulators.openai_api import OpenAIEmulator, StreamTiming
from tests.emulators.slack import Delivery, PreparedDelivery, SlackEmulator

USERS = ("U1", "U2", "U3", "U4")
QUESTION_ID = re.compile(r"\b(q\d{5,})\b")
ANSWER_START = re.compile(r"ANS(q\d{5,})")
ANSWER_END = re.compile(r"END(q\d{5,})")
# Methods that put answer text in front of the user, and those that open a message of it.
TEXT_METHODS = {"chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream"}
OPENING_METHODS = {"chat.postMessage", "chat.startStream"}
CONTENT_ARGS = ("text", "markdown_text", "blocks", "attachments", "chunks")
FILLER = (
    "Check the settings page first, then restart the sync agent and try the export again. "
    "If the error persists, collect the log file and open a ticket with its request id. "
)

Route = str | None  # an HTTP request URL, or None for the Socket Mode connection
SLACK_ACK_SECONDS = 3.0  # Slack retries an event delivery not acknowledged within this
Router = Callable[[], list[Route]]  # where one event goes: its first delivery, then redeliveries


@dataclass(frozen=True)
class ModelShape:
    """How the emulated model answers: time to the first token, then a stream of fixed length."""

    first_token_seconds: float
    stream_seconds: float
    answer_chars: int
    chunk_chars: int

    @property
    def chunks(self) -> int:
        return max(1, -(-self.answer_chars // self.chunk_chars))

    @property
    def chunk_delay(self) -> float:
        return self.stream_seconds / (self.chunks - 1) if self.chunks > 1 else 0.0

    @property
    def ideal(self) -> float:
        """The model's own time to produce one answer: the best any bot could do."""
        return self.first_token_seconds + self.stream_seconds

    def answer(self, qid: str) -> str:
        head, tail = f"ANS{qid} ", f" END{qid}"
        room = max(0, self.answer_chars - len(head) - len(tail))
        body = (FILLER * (room // len(FILLER) + 1))[:room].rstrip()
        return head + body + tail


def slack_tiers_available(slack: SlackEmulator) -> bool:
    """Whether the Slack emulator can enforce Slack's per-method, per-workspace rate limits.

    The one place to adapt when the emulator gains them (the streaming issue adds them).
    """
    return callable(getattr(slack, "enforce_rate_limits", None))


def enable_slack_tiers(slack: SlackEmulator) -> None:
    slack.enforce_rate_limits(time_scale=1.0)  # Slack's published tiers, in real time


@dataclass
class Asked:
    """One question a user asked, and what became of it, in time.monotonic() seconds."""

    qid: str
    channel: str
    ts: str
    thread: str | None  # where the reply goes: the thread's ts, or None for a DM's top level
    # When sending its first event began (Rig.send; see Delivery.sent_at): the start of its ack,
    # signal and done. Its message was stored in Slack and its events built and signed before that,
    # before the step's clock started (Rig.prepare).
    sent_at: float
    deliveries: list[Delivery] = field(default_factory=list)
    routes: list[list[Route]] = field(default_factory=list)  # per event: first delivery, redeliveries
    signal_at: float | None = None
    first_text_at: float | None = None
    first_text_whole: bool = False  # the first visible text already held the whole answer
    end_at: float | None = None
    done_at: float | None = None
    answer_messages: set[tuple[str, str]] = field(default_factory=set)  # (channel, ts)
    shown_at: list[float] = field(default_factory=list)  # each call that showed more of the answer


@dataclass(frozen=True)
class Outgoing:
    """One delivery of an event, ready to write: over HTTP as `request`, else by the emulator's
    Socket Mode connection; `delay` seconds after the question's first (a redelivery's race)."""

    prepared: PreparedDelivery
    request: Request | None
    delay: float


@dataclass
class Question:
    """A question prepared ahead of sending: its record, and each delivery of its events."""

    asked: Asked
    deliveries: list[Outgoing] = field(default_factory=list)


class Tracker:
    """Reads the Slack emulator's call log, from one index on, into the Asked records."""

    def __init__(self, slack: SlackEmulator, llm: OpenAIEmulator) -> None:
        self.slack = slack
        self.llm = llm
        self.first_call = len(slack.calls)
        self.first_stream = len(llm.streams)
        self._next = self.first_call
        self.asked: dict[str, Asked] = {}
        self._by_ts: dict[tuple[str, str], Asked] = {}
        self._by_thread: dict[tuple[str, str], list[Asked]] = {}
        self._owner: dict[tuple[str, str], Asked] = {}  # answer message -> its question
        self._streaming: set[tuple[str, str]] = set()  # messages opened by chat.startStream
        self.rate_limited: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.other_posts = 0  # bot messages with no answer in them (notices, apologies)

    def add(self, asked: Asked) -> None:
        self.asked[asked.qid] = asked
        self._by_ts[(asked.channel, asked.ts)] = asked
        if asked.thread is not None:
            self._by_thread.setdefault((asked.channel, asked.thread), []).append(asked)

    def read(self) -> None:
        calls = self.slack.calls
        end = len(calls)
        for call in calls[self._next : end]:  # a slice: islice would walk the whole log each poll
            self._read_call(call.method, call.args, call.response, call.status, call.at)
        self._next = end

    def _read_call(self, method: str, args: dict, response: dict, status: int, at: float) -> None:
        if status == 429 or response.get("error") == "ratelimited":
            self.rate_limited[method] += 1
        if not response.get("ok"):
            self.failed[f"{method}:{response.get('error')}"] += 1
            return
        if method == "assistant.threads.setStatus" and args.get("status"):
            waiting = self._by_thread.get((args.get("channel_id", ""), args.get("thread_ts", "")), [])
            asked = next((a for a in waiting if a.signal_at is None), None)
            self._signal(asked, at)
        elif method == "reactions.add":
            self._signal(self._by_ts.get((args.get("channel", ""), args.get("timestamp", ""))), at)
        if method not in TEXT_METHODS:
            return
        channel = str(args.get("channel") or response.get("channel") or "")
        ts = str((response.get("ts") if method in OPENING_METHODS else args.get("ts")) or "")
        message = (channel, ts)
        if method == "chat.startStream":
            self._streaming.add(message)
        text = " ".join(_strings([args[k] for k in CONTENT_ARGS if k in args]))
        starts, ends = set(ANSWER_START.findall(text)), set(ANSWER_END.findall(text))
        for qid in starts | ends:
            asked = self.asked.get(qid)
            if asked is None:
                continue
            self._owner[message] = asked
            self._signal(asked, at)
            if qid in starts:
                asked.answer_messages.add(message)
                if asked.first_text_at is None:
                    asked.first_text_at = at
                    asked.first_text_whole = qid in ends
            if qid in ends and asked.end_at is None:
                asked.end_at = at
                if message not in self._streaming or method == "chat.stopStream":
                    asked.done_at = at
        owner = self._owner.get(message)
        if owner is not None and text.strip() and (not owner.shown_at or owner.shown_at[-1] != at):
            owner.shown_at.append(at)
        if method == "chat.stopStream" and owner is not None and owner.end_at is not None:
            owner.done_at = owner.done_at or at
        # A stream opens empty; a message with words but no answer in it is a notice.
        if owner is None and method in OPENING_METHODS and text.strip():
            self.other_posts += 1

    @staticmethod
    def _signal(asked: Asked | None, at: float) -> None:
        if asked is not None and asked.signal_at is None:
            asked.signal_at = at

    def first_tokens(self) -> dict[str, StreamTiming]:
        """The model's stream for each question (the first one that produced content)."""
        found: dict[str, StreamTiming] = {}
        for timing in self.llm.streams[self.first_stream :]:
            qid = _question_id(timing.messages)
            if qid and qid not in found and timing.first_content_at is not None:
                found[qid] = timing
        return found

    def shown_answer(self, asked: Asked) -> str:
        """What the question's answer messages show now, in order (each its markdown block, else
        its text)."""
        parts = []
        for channel, ts in sorted(asked.answer_messages, key=lambda m: Decimal(m[1])):
            message = self.slack.message(channel, ts) or {}
            markdown = [b.get("text", "") for b in message.get("blocks") or [] if b.get("type") == "markdown"]
            parts.append("".join(markdown) if markdown else str(message.get("text", "")))
        return "\n".join(parts)

    def calls_made(self) -> Counter[str]:
        return Counter(c.method for c in self.slack.calls[self.first_call :])


class Rig:
    """The emulators and the users: ask questions, wait for answers, summarize what happened."""

    def __init__(self, model: ModelShape) -> None:
        self.slack = SlackEmulator()
        for user in USERS[1:]:
            self.slack.add_user(user, f"user-{user.lower()}")
        self.model = model
        self.llm = OpenAIEmulator(reply=self._reply)
        self.set_model(model)
        self._ids = itertools.count(1)
        self.tracker = Tracker(self.slack, self.llm)
        self.http = HttpSender(timeout=self.slack.http_timeout)
        # Where an HTTP delivery that was not acknowledged is sent again, as Slack does (its
        # first retry comes at once); None: not sent again.
        self.retry_routes: list[str] | None = None
        self.retried = 0
        self._later: set[asyncio.Task[None]] = set()  # deliveries to be sent again after a wait
        self._people = 0  # how many of `people` Slack knows

    async def start(self) -> None:
        await self.slack.start()
        await self.llm.start()

    async def stop(self) -> None:
        for later in list(self._later):
            later.cancel()
        self.http.close()
        await self.llm.stop()
        await self.slack.stop()

    def set_model(self, model: ModelShape) -> None:
        self.model = model
        self.llm.first_token_delay = model.first_token_seconds
        self.llm.chunk_delay = model.chunk_delay
        self.llm.chunk_chars = model.chunk_chars

    def new_tracker(self) -> Tracker:
        self.tracker = Tracker(self.slack, self.llm)
        return self.tracker

    def forget(self, keep_threads: Iterable[tuple[str, str]] = ()) -> Tracker:
        """Start a new tracker on emulators that forgot everything measured so far, but the
        threads in `keep_threads` ((channel, thread ts)): what lets a soak run for hours."""
        self.slack.forget(keep_threads)
        self.llm.forget()
        return self.new_tracker()

    def bot_env(self, redis_url: str, port: int, mode: str) -> dict[str, str]:
        """The bot's settings: production defaults, with Slack, the model and Redis pointed here."""
        env = {
            "SLACK_BOT_TOKEN": self.slack.bot_token,
            "SLACK_API_URL": self.slack.api_url,
            "OPENAI_BASE_URL": self.llm.base_url,
            "OPENAI_API_KEY": self.llm.api_key,
            "OPENAI_MODEL": "bench-model",
            "REDIS_URL": redis_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "INFO",
            # Mentions come from four people (a DM from its own person); at the per-person
            # abuse limits (10 a minute) all but 40 questions would get the polite refusal.
            "RATE_LIMIT_USER_PER_MINUTE": "1000000",
            "RATE_LIMIT_USER_PER_DAY": "1000000",
            "RATE_LIMIT_CHANNEL_PER_MINUTE": "1000000",
        }
        if mode == "socket":
            env["SLACK_APP_TOKEN"] = self.slack.app_token
        else:
            env["SLACK_SIGNING_SECRET"] = self.slack.signing_secret
        return env

    def _reply(self, messages: list[dict]) -> str:
        qid = _question_id(messages)
        return self.model.answer(qid) if qid else "I could not find a question id."

    # -- users asking --------------------------------------------------------------------

    def people(self, n: int) -> tuple[str, ...]:
        """`n` people with names in Slack; the same ones on every call (new to a fresh bot)."""
        people = tuple(f"UP{i:05d}" for i in range(n))
        for person in people[self._people :]:
            self.slack.add_user(person, f"person-{person.lower()}")
        self._people = max(self._people, n)
        return people

    def prepare(
        self,
        channel: str,
        *,
        thread_ts: str | None = None,
        dm: bool = False,
        router: Router = lambda: [None],
        user: str = "U1",
    ) -> Question:
        """A user posts a question (a mention in a channel or thread, or a DM): the message is
        stored in Slack, and its events are built, serialized and signed, ready for `send`.

        A channel message comes as two events, `message` and `app_mention`, as Slack sends them;
        `router` picks where each event goes, and a second route is a redelivery (a retry).
        """
        qid = f"q{next(self._ids):05d}"
        text = f"question {qid}" if dm else f"<@{self.slack.bot_user_id}> question {qid}"
        if dm:
            self.slack.add_channel(channel, "im", user=user)
        ts = self.slack.seed_message(channel, text, user=user, thread_ts=thread_ts)
        event: dict[str, Any] = {
            "type": "message",
            "user": user,
            "text": text,
            "ts": ts,
            "team": self.slack.team_id,
            "client_msg_id": str(uuid.uuid4()),
            "channel": channel,
            "event_ts": ts,
            "channel_type": "im" if dm else "channel",
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        events = [event]
        if not dm:
            events.append({k: v for k, v in event.items() if k != "channel_type"} | {"type": "app_mention"})
        # sent_at is provisional until send() writes the first event.
        asked = Asked(qid, channel, ts, thread_ts if dm else (thread_ts or ts), time.monotonic())
        self.tracker.add(asked)
        question = Question(asked)
        for payload in events:
            event_id = f"Ev{uuid.uuid4().hex[:12].upper()}"
            routes = router()
            asked.routes.append(routes)
            for attempt, route in enumerate(routes):
                if route is None:
                    self.slack.use_socket()
                else:
                    self.slack.use_http(route)
                prepared = self.slack.prepare_event(payload, event_id=event_id, retry_num=attempt or None)
                request = None if route is None else encode(prepared)
                delay = random.uniform(0, 0.02) if attempt else 0.0  # a redelivery races the first one
                question.deliveries.append(Outgoing(prepared, request, delay))
        return question

    async def send(self, question: Question) -> Asked:
        """Write a prepared question's events (all at once) and wait for their acks.

        The question's `sent_at` becomes the moment sending its first event began."""
        asked = question.asked
        asked.deliveries = list(await asyncio.gather(*(self._send(d) for d in question.deliveries)))
        asked.sent_at = min(d.sent_at for d in asked.deliveries)
        return asked

    async def ask(
        self,
        channel: str,
        *,
        thread_ts: str | None = None,
        dm: bool = False,
        router: Router = lambda: [None],
        user: str = "U1",
    ) -> Asked:
        """prepare() and send() at once: a question asked now."""
        return await self.send(self.prepare(channel, thread_ts=thread_ts, dm=dm, router=router, user=user))

    async def _send(self, outgoing: Outgoing) -> Delivery:
        if outgoing.delay:
            await asyncio.sleep(outgoing.delay)
        delivery = await self._send_once(outgoing.prepared, outgoing.request)
        if delivery.acked:
            return delivery
        if self.slack.retry_waits and not self.retry_routes:
            return await self._send_again(outgoing.prepared, delivery, self.slack.retry_waits)
        if outgoing.request is None or not self.retry_routes:
            return delivery
        # Slack sends it again, marked as a retry; a load balancer passes it to a live process.
        self.retried += 1
        retry_headers = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
        again = replace(
            outgoing.prepared,
            url=random.choice(self.retry_routes),
            headers=outgoing.prepared.headers | retry_headers,
        )
        retried = await self.http.send(encode(again))
        # One delivery as Slack's log would show it: sent when the first attempt was.
        elapsed = retried.sent_at + retried.elapsed - delivery.sent_at
        return replace(retried, elapsed=elapsed, sent_at=delivery.sent_at)

    async def _send_once(self, prepared: PreparedDelivery, request: Request | None = None) -> Delivery:
        if prepared.url is None:
            return await self.slack.send_prepared(prepared, waits=())
        return await self.http.send(request or encode(prepared))

    async def _send_again(
        self, prepared: PreparedDelivery, failed: Delivery, waits: tuple[float, ...]
    ) -> Delivery:
        """As Slack does with a delivery that failed (SlackEmulator.retry_failed_deliveries): again
        at once, then after each longer wait. Those later attempts run on their own, so that a step
        does not wait minutes for them; a question answered through one is answered after its
        step (bench.soak looks for those again at its end)."""
        first = failed
        for index, wait in enumerate(waits):
            if wait > 0:
                later = asyncio.create_task(self._send_later(prepared, failed, waits[index:]))
                self._later.add(later)
                later.add_done_callback(self._later.discard)
                break
            prepared = self.slack.redelivery(prepared, failed)
            self.retried += 1
            failed = await self._send_once(prepared)
            if failed.acked:
                break
        # One delivery as Slack's log would show it: sent when the first attempt was.
        return replace(failed, elapsed=failed.sent_at + failed.elapsed - first.sent_at, sent_at=first.sent_at)

    async def _send_later(
        self, prepared: PreparedDelivery, failed: Delivery, waits: tuple[float, ...]
    ) -> None:
        for wait in waits:
            await asyncio.sleep(wait)
            prepared = self.slack.redelivery(prepared, failed)
            self.retried += 1
            failed = await self._send_once(prepared)
            if failed.acked:
                return

    async def wait_quiet(self, idle: float = 0.5, limit: float = 5.0) -> None:
        """Wait until the bot has made no Slack call for `idle` s (at most `limit` s): the calls
        that follow a step's last answer (a sign taken away, a 429 on it) belong to that step."""
        deadline = time.monotonic() + limit
        seen, since = len(self.slack.calls), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < idle:
            await asyncio.sleep(0.05)
            if len(self.slack.calls) != seen:
                seen, since = len(self.slack.calls), time.monotonic()

    async def wait_answered(self, asked: Iterable[Asked], timeout: float) -> bool:  # noqa: ASYNC109
        """Poll the call log until every question has its final answer, or `timeout` passes."""
        pending = list(asked)
        deadline = time.monotonic() + timeout
        while True:
            self.tracker.read()
            pending = [a for a in pending if a.done_at is None]
            if not pending:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)


def summarize(
    tracker: Tracker,
    asked: list[Asked],
    ideal: float | None,
    answer_text: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Per-question latencies as percentiles, with counts of what went wrong. `answer_text`:
    the model's answer to a question id, to check that each answer shows whole and once."""
    tracker.read()
    first_tokens = tracker.first_tokens()
    first_acks = [a.deliveries[0] for a in asked if a.deliveries]
    acks = [d.elapsed for d in first_acks if d.acked]
    done = [a.done_at - a.sent_at for a in asked if a.done_at is not None]
    signals = [a.signal_at - a.sent_at for a in asked if a.signal_at is not None]
    first_texts = [
        a.first_text_at - first_tokens[a.qid].first_content_at  # type: ignore[operator]
        for a in asked
        if a.first_text_at is not None and a.qid in first_tokens
    ]
    streamed = [a for a in asked if a.first_text_at is not None and not a.first_text_whole]
    # A question with no ack, sign, text or answer counts as infinitely late, not as absent.
    result: dict[str, Any] = {
        "questions": len(asked),
        "answered": len(done),
        "ack": percentiles(acks, missing=len(first_acks) - len(acks)),
        "deliveries_failed": sum(not d.acked for a in asked for d in a.deliveries),
        # Every event's every delivery, a mention's twin event included: Slack delivers again
        # what is not acknowledged within 3 s. (Over HTTP the sender, and in Socket Mode the
        # emulator, stop waiting at 3 s, as Slack does, and count the delivery as failed; the
        # emulator waited 5 s in Socket Mode before 7 Dec, and "late" counted the acks after 3 s.)
        "acks_late": sum(d.acked and d.elapsed > SLACK_ACK_SECONDS for a in asked for d in a.deliveries),
        "signal": percentiles(signals, missing=len(asked) - len(signals)),
        "first_text": percentiles(first_texts, missing=len(asked) - len(first_texts)),
        "done": percentiles(done, missing=len(asked) - len(done)),
        "done_max": max(done) if done else None,
        "model_time": percentiles(
            [
                timing.finished_at - timing.arrived_at
                for qid, timing in first_tokens.items()
                if timing.finished_at is not None and qid in tracker.asked
            ]
        ),
        # A streamed answer's longest wait between two growths on screen, first text to final.
        "longest_gap": percentiles(
            [max(b - a for a, b in itertools.pairwise(x.shown_at)) for x in streamed if len(x.shown_at) > 1]
        ),
        "streamed": len(streamed),
        "whole": sum(a.first_text_at is not None and a.first_text_whole for a in asked),
        "answers_per_message": dict(Counter(len(a.answer_messages) for a in asked)),
        # Answered, but not showing exactly the model's text (a piece lost or repeated).
        "incomplete": (
            sum(
                _squeezed(tracker.shown_answer(a)) != _squeezed(answer_text(a.qid))
                for a in asked
                if a.done_at is not None
            )
            if answer_text is not None
            else None
        ),
        "rate_limited": dict(tracker.rate_limited),
        "slack_errors": dict(tracker.failed),
        "other_posts": tracker.other_posts,
        "slack_calls": dict(tracker.calls_made()),
    }
    if ideal:
        result["ideal"] = ideal
        done_pcts = result["done"].items()
        result["done_over_ideal"] = {k: (v / ideal if v is not None else None) for k, v in done_pcts}
    return result


def out_of_order(threads: list[list[Asked]]) -> list[list[Asked]]:
    """Threads where an answer appears before the answer to an earlier question of the thread."""
    found = []
    for thread in threads:
        answered = [a for a in thread if a.answer_messages]
        for earlier, later in itertools.pairwise(answered):
            if min(Decimal(ts) for _, ts in later.answer_messages) < max(
                Decimal(ts) for _, ts in earlier.answer_messages
            ):
                found.append(thread)
                break
    return found


def describe_thread(thread: list[Asked], routes: list[Route]) -> list[dict[str, Any]]:
    """One thread's questions in the order asked: when sent, where each event went, when answered.

    (No sign time: a thread status says which thread is being answered, not which message.)"""
    start = thread[0].sent_at
    return [
        {
            "qid": a.qid,
            "sent_s": round(a.sent_at - start, 3),
            "events_to_process": [[routes.index(r) + 1 if r in routes else r for r in rs] for rs in a.routes],
            "answered_s": None if a.done_at is None else round(a.done_at - start, 3),
            "answer_ts": sorted(ts for _, ts in a.answer_messages),
        }
        for a in thread
    ]


def _question_id(messages: list[dict]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            found = QUESTION_ID.search(str(message.get("content") or ""))
            return found.group(1) if found else None
    return None


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a value: a call's text, or its blocks, attachments and chunks."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _squeezed(text: str) -> str:
    return "".join(text.split())
