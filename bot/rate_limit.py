"""Slack's rate limits as one shared budget: every Slack call the bot makes for a turn (delivery,
and reading names and earlier thread messages) is taken from it first.

Slack limits each Web API method per workspace (Tier 2 ≈ 20 calls a minute, Tier 3 ≈ 50, Tier 4
≈ 100), chat.postMessage to about one message a second per channel, and
assistant.threads.setStatus to about one a second per thread. The budget for each (workspace,
method, channel or thread) is a sliding window kept in Redis (see `Store.claim_rate`), so all
answers in flight and all bot processes sharing the Redis draw from the same one:

- A call that must happen later (the final chat.stopStream of a stream, the last chat.update of
  a posted answer, removing a reaction) *holds* its slot when the answer starts. Held slots
  count as used, so intermediate updates can never spend what a final message needs.
- Writers in flight on a method are counted; each spaces its updates by its fair share of the
  window, so with many answers each gets fewer, larger updates instead of a 429.
- When Slack still answers 429, its Retry-After pauses the bucket for every process, and the
  caller keeps its text to send with the next update.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.lost_answers import OutcomeUnknown, partly_done
from bot.slack_client import failed_answer
from bot.store import Fence, RateBucket, RateClaim, Store

log = logging.getLogger(__name__)

Scope = Literal["workspace", "channel", "thread"]


@dataclass(frozen=True)
class MethodLimit:
    calls: int
    seconds: float
    scope: Scope


# From Slack's method reference (../shared/slack/methods/*.json: rate_limits).
LIMITS: dict[str, MethodLimit] = {
    "chat.startStream": MethodLimit(20, 60, "workspace"),  # Tier 2
    "chat.stopStream": MethodLimit(20, 60, "workspace"),  # Tier 2
    "chat.appendStream": MethodLimit(100, 60, "workspace"),  # Tier 4
    "chat.update": MethodLimit(50, 60, "workspace"),  # Tier 3
    "chat.postMessage": MethodLimit(1, 1, "channel"),  # special: ~1/s per channel
    "chat.postEphemeral": MethodLimit(100, 60, "workspace"),  # Tier 4
    "assistant.threads.setStatus": MethodLimit(1, 1, "thread"),  # ~1/s per conversation
    "reactions.add": MethodLimit(50, 60, "workspace"),  # Tier 3
    "reactions.remove": MethodLimit(20, 60, "workspace"),  # Tier 2
    "users.info": MethodLimit(100, 60, "workspace"),  # Tier 4: names of people new to the bot
    # Read for a thread's earlier messages and for an answer a crashed process posted (internal
    # apps: Tier 3; Slack allows commercially distributed apps outside its Marketplace far less,
    # see README).
    "conversations.replies": MethodLimit(50, 60, "workspace"),  # Tier 3
    "conversations.history": MethodLimit(50, 60, "workspace"),  # Tier 3
}
# Our window is a little longer than Slack's: calls reach Slack a moment after they are counted.
SAFETY = 1.1
HOLD_SECONDS = 600  # a held slot not used by then (a crashed process) is free again
REFUSALS_REMEMBERED = 1000  # per-channel and per-thread buckets come and go; past this, prune
# Jitter from a generator of our own: the process-wide one belongs to whoever seeds it.
_jitter = random.Random()


class RateLimited(Exception):
    """No slot now (or Slack answered 429): try again in `retry_in` seconds, text kept."""

    def __init__(self, method: str, retry_in: float, *, from_slack: bool = False) -> None:
        super().__init__(f"{method} rate limited, retry in {retry_in:.2f}s")
        self.method = method
        self.retry_in = retry_in
        self.from_slack = from_slack


@dataclass(frozen=True)
class Hold:
    """A slot kept for a call that comes later (see `BudgetedSlack.call(holds=…, use=…)`)."""

    bucket: RateBucket
    member: str


class SlackBudget:
    """Buckets per workspace, method and scope, with the windows `scale` makes of Slack's limits.

    `scale` multiplies every budget (2 = twice Slack's documented rate); it exists for apps that
    Slack granted more, and for tests that play a minute in a few seconds.
    """

    def __init__(self, store: Store, *, scale: float = 1.0) -> None:
        self.store = store
        self.scale = scale
        self._active: dict[str, int] = {}  # last count of writers seen per bucket
        # Buckets Redis last found full, until when, and for claims of which headroom (one that
        # leaves more room is refused too): asking again sooner is a round trip spent on a
        # refusal. Kept per bucket, not per set of claims: a posted answer claims its channel's
        # bucket with the workspace's chat.update, and many answers in as many channels meet the
        # same full chat.update. Only a hold given back early frees a slot sooner, and that only
        # delays an update, never loses one.
        self._full_until: dict[str, tuple[float, int]] = {}
        self._prune_above = REFUSALS_REMEMBERED
        self._redis_warned = False

    def bucket(self, team: str, method: str, scope: str | None = None) -> RateBucket:
        limit = LIMITS[method]
        name = f"{team}:{method}" if limit.scope == "workspace" else f"{team}:{method}:{scope}"
        window_ms = max(1, round(limit.seconds * SAFETY / self.scale * 1000))
        return RateBucket(name, limit.calls, window_ms)

    def hold_for(self, team: str, method: str, scope: str | None = None) -> Hold:
        return Hold(self.bucket(team, method, scope), uuid.uuid4().hex)

    def fair_interval(self, team: str, method: str) -> float:
        """Seconds between one writer's updates so that all writers in flight fit the window."""
        bucket = self.bucket(team, method)
        writers = max(1, self._active.get(bucket.name, 1))
        return bucket.window_ms / 1000 * writers / bucket.limit

    async def claim(
        self,
        claims: list[RateClaim],
        *,
        wait: float,
        writer: str = "",
        fence: Fence | None = None,
    ) -> None:
        """Take the claims within `wait` seconds, or raise RateLimited; LockLost when `fence`
        no longer holds (see `Store.claim_rate`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        first = claims[0].bucket
        # A held slot is spent whatever else is in the window: no remembered refusal applies to it.
        remembered = not any(c.mode == "use" for c in claims)
        while True:
            known_full = self._known_full(claims, loop.time()) if remembered else 0.0
            if known_full > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RateLimited(first.name.split(":")[1], known_full)
                await asyncio.sleep(min(known_full * _jitter.uniform(1.0, 1.1), remaining))
                continue
            try:
                grant = await self.store.claim_rate(
                    claims, writer=writer, writer_ttl_ms=2 * first.window_ms, fence=fence
                )
            except (RedisError, OSError) as error:
                # Without Redis the budget is unknown: call Slack anyway and rely on its 429s.
                if not self._redis_warned:
                    log.warning("rate budget unavailable, calling Slack unmetered error=%s", error)
                    self._redis_warned = True
                return
            if writer:  # only updates share a bucket among writers (and per-channel buckets are many)
                self._active[first.name] = grant.active
            if grant.granted:
                return
            if remembered:
                self._remember_full(claims, grant.waits, loop.time())
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RateLimited(first.name.split(":")[1], grant.wait)
            await asyncio.sleep(min(grant.wait * _jitter.uniform(1.0, 1.1), remaining))

    def _known_full(self, claims: list[RateClaim], now: float) -> float:
        """Seconds until the fullest of these buckets may have room, as last refused; 0 if none."""
        longest = 0.0
        for claim in claims:
            until, headroom = self._full_until.get(claim.bucket.name, (0.0, 0))
            if claim.headroom >= headroom:
                longest = max(longest, until - now)
        return longest

    def _remember_full(self, claims: list[RateClaim], waits: tuple[float, ...], now: float) -> None:
        self._forget_old_refusals(now)
        for claim, seconds in zip(claims, waits, strict=False):
            if seconds > 0:
                self._full_until[claim.bucket.name] = (now + seconds, claim.headroom)

    def _forget_old_refusals(self, now: float) -> None:
        # Pruned only once the refusals have doubled since the last pruning: with more than
        # REFUSALS_REMEMBERED still current (a burst's answers each waiting on a channel's
        # bucket of its own), pruning at every refusal took 4 % of the bot's CPU at 150 answers a second.
        if len(self._full_until) > self._prune_above:
            self._full_until = {k: v for k, v in self._full_until.items() if v[0] > now}
            self._prune_above = max(REFUSALS_REMEMBERED, 2 * len(self._full_until))

    async def release(self, hold: Hold) -> None:
        # A slot given back here may be what a refusal remembered here was missing.
        self._full_until.pop(hold.bucket.name, None)
        try:
            await self.store.release_rate_hold(hold.bucket, hold.member)
        except (RedisError, OSError):
            pass  # it expires on its own

    async def leave(self, team: str, methods: tuple[str, ...], writer: str) -> None:
        try:
            await self.store.leave_rate([self.bucket(team, method) for method in methods], writer)
        except (RedisError, OSError):
            pass

    async def pause(self, bucket: RateBucket, seconds: float) -> None:
        try:
            await self.store.pause_rate(bucket, seconds)
        except (RedisError, OSError):
            pass


class BudgetedSlack:
    """Slack Web API calls made within the shared budget; 429s pause the bucket for everyone."""

    def __init__(self, client: AsyncWebClient, budget: SlackBudget) -> None:
        self.client = client
        self.budget = budget

    async def call(
        self,
        method: str,
        *,
        team: str,
        scope: str | None = None,
        wait: float = 0.0,
        headroom: int = 0,
        holds: tuple[Hold, ...] = (),
        use: Hold | None = None,
        writer: str = "",
        counted: bool = False,
        fence: Fence | None = None,
        http_verb: Literal["POST", "GET"] = "POST",
        **args: Any,
    ) -> AsyncSlackResponse:
        """Call `method` once a slot is free (waiting at most `wait` s), taking `holds` with it.

        `use` spends a slot held earlier; `counted`: the call was counted in its bucket already
        (see `Store.accept`); `fence`: made only while that thread lock is held, else LockLost;
        `http_verb` GET sends the arguments as a query (Slack's read methods).
        Raises RateLimited when no slot came in time or Slack answered 429; other Slack errors
        as SlackApiError.
        """
        bucket = self.budget.bucket(team, method, scope)
        if not counted:
            first = (
                RateClaim(bucket, "use", use.member)
                if use is not None
                else RateClaim(bucket, "take", uuid.uuid4().hex, headroom=headroom)
            )
            hold_ms = int(HOLD_SECONDS * 1000 / max(self.budget.scale, 1))
            claims = [first] + [RateClaim(h.bucket, "hold", h.member, hold_ms=hold_ms) for h in holds]
            await self.budget.claim(claims, wait=wait, writer=writer, fence=fence)
        try:
            if http_verb == "GET":
                return await self.client.api_call(method, http_verb="GET", params=_without_none(args))
            return await self.client.api_call(method, json=_without_none(args))
        except BaseException as error:
            # A failed call needs no later call: its holds go back to the budget.
            for hold in holds:
                await self.budget.release(hold)
            if not isinstance(error, SlackApiError):
                raise
            readable = self._readable(error, method, http_verb)
            status, code = readable.response.status_code, readable.response.get("error")
            if partly_done(method, status, code):
                raise OutcomeUnknown(method, str(code)) from error
            if status != 429:
                if readable is error:
                    raise
                raise readable from error  # slack_sdk's own (the page's start) stays as the cause
            retry_after = _retry_after(readable.response.headers)
            log.warning("slack rate limited method=%s retry_after=%.2fs", method, retry_after)
            await self.budget.pause(bucket, retry_after)
            raise RateLimited(method, retry_after, from_slack=True) from None

    def _readable(self, error: SlackApiError, method: str, http_verb: str) -> SlackApiError:
        """The error with Slack's answer in the usual shape. A gateway's HTML page (a 502) gives
        no error code, and a body that claims JSON and is not leaves aiohttp's raw response in
        its place: either now reads as error `http_<status>`."""
        response = error.response
        slack_shaped = isinstance(response, AsyncSlackResponse)
        if slack_shaped and isinstance(response.data, dict) and response.get("error"):
            return error
        status = response.status_code if slack_shaped else getattr(response, "status", 0)
        readable = failed_answer(self.client, method, http_verb, status, getattr(response, "headers", None))
        return SlackApiError(f"{method} failed: http_{status}", readable)


# What a budgeted call can fail with, besides LockLost: Slack's error, no slot in time (or a 429),
# or no answer from Slack at all.
CALL_ERRORS: tuple[type[BaseException], ...] = (
    SlackApiError,
    RateLimited,
    OutcomeUnknown,
    aiohttp.ClientError,
    TimeoutError,
)
# Of those, the failures that leave Slack's answer unknown (see bot/lost_answers.py).
NO_ANSWER_ERRORS: tuple[type[BaseException], ...] = (OutcomeUnknown, aiohttp.ClientError, TimeoutError)


def error_code(error: BaseException) -> str:
    """For a log line: Slack's error code, else the kind of failure."""
    if isinstance(error, SlackApiError):
        return str(error.response.get("error"))
    return error.code if isinstance(error, OutcomeUnknown) else type(error).__name__


def _without_none(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def _retry_after(headers: Mapping[str, Any] | None) -> float:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value[0] if isinstance(value, list) else value))
            except (TypeError, ValueError):
                break
    return 1.0
