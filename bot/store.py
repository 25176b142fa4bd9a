"""Everything Redis: key names and TTLs, conversation records, the per-thread inbox, dedup, locks,
feedback votes and the Slack rate budget shared by every bot process.

Every key the bot uses is built by a function in `Keys`, with its TTL beside it. Steps that must
happen together (dedup + enqueue, compare-and-delete of a lock, taking rate-limit slots) are Lua
scripts so that several bot processes sharing one Redis never see half of one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

DAY = 24 * 3600
POOL_SIZE = 200
POOL_WAIT_SECONDS = 10

Action = Literal["answer", "record", "reset"]


@dataclass(frozen=True)
class ThreadKey:
    """One conversation: a Slack thread, or a DM's rolling top level (thread == "dm")."""

    team: str
    channel: str
    thread: str

    def __str__(self) -> str:
        return f"{self.team}:{self.channel}:{self.thread}"

    @classmethod
    def parse(cls, text: str) -> ThreadKey:
        team, channel, thread = text.split(":", 2)
        return cls(team, channel, thread)


@dataclass(frozen=True)
class IncomingMessage:
    """A user's Slack message the bot has decided to act on, as queued in the thread's inbox."""

    team: str
    channel: str
    ts: str
    user: str
    text: str
    action: Action
    # Where the reply goes: the Slack thread ts, or None for a top-level DM reply.
    reply_thread_ts: str | None
    conversation: str  # ThreadKey.thread
    bot_user_id: str
    is_dm: bool = False

    @property
    def key(self) -> ThreadKey:
        return ThreadKey(self.team, self.channel, self.conversation)

    @property
    def starts_conversation(self) -> bool:
        """True when nothing in Slack precedes this message in its conversation."""
        return self.conversation in ("dm", self.ts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> IncomingMessage:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Turn:
    """One stored message of a conversation; an answer also keeps the tokens it cost."""

    role: Literal["user", "assistant"]
    text: str
    ts: str
    user: str | None = None
    name: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v is not None or k in _TURN_CORE}
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        # Records written by older (or newer) versions may lack fields or carry others.
        record = json.loads(raw)
        return cls(**{k: v for k, v in record.items() if k in _TURN_FIELDS})


_TURN_FIELDS = {f.name for f in fields(Turn)}
_TURN_CORE = {"role", "text", "ts", "user", "name"}


@dataclass(frozen=True)
class FeedbackVote:
    """A person's thumbs up or down on one answer."""

    team: str
    channel: str
    thread: str  # the conversation (ThreadKey.thread)
    answer_ts: str  # the answer's first message, as stored in its Turn
    message_ts: str  # the message whose buttons were pressed
    user: str
    vote: Literal["good", "bad"]
    at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(frozen=True)
class RateBucket:
    """One rate-limited budget: `limit` calls per `window_ms`, shared by every bot process."""

    name: str  # team, method and scope, e.g. "T1:chat.postMessage:C1"
    limit: int
    window_ms: int


@dataclass(frozen=True)
class RateClaim:
    """What to take from a bucket: a call now ("take"), a slot kept for later ("hold"), or the
    call a held slot was kept for ("use"). `headroom` slots must stay free after a take."""

    bucket: RateBucket
    mode: Literal["take", "hold", "use"]
    member: str
    headroom: int = 0
    hold_ms: int = 0


@dataclass(frozen=True)
class RateGrant:
    granted: bool
    wait: float  # seconds until a slot may free, when not granted
    active: int  # writers in flight on the first bucket (for sharing it fairly)


@dataclass(frozen=True)
class TurnRecord:
    """The journal of one turn: where it got to, so that a crash never loses or repeats it."""

    state: str = "queued"  # queued → working → answered | noted | failed
    sign: str = "none"  # the thinking sign shown: status, reaction or none
    user_turn_stored: bool = False
    answer: str | None = None  # produced but not yet delivered
    answer_ts: str | None = None  # something of the answer is visible in Slack
    attempts: int = 0

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TurnRecord:
        return cls(
            state=raw.get("state", "queued"),
            sign=raw.get("sign", "none"),
            user_turn_stored=raw.get("user_turn_stored") == "1",
            answer=raw.get("answer") or None,
            answer_ts=raw.get("answer_ts") or None,
            attempts=int(raw.get("attempts", "0")),
        )


class StoreUnavailable(Exception):
    """Redis did not answer; callers tell the user to try again rather than go silent."""


class Keys:
    """Key names and their TTLs, in one place."""

    DEDUP_TTL = DAY  # Slack retries within minutes; a day is ample and cheap.
    INBOX_TTL = DAY
    NAME_TTL = DAY  # display names change rarely
    JOURNAL_TTL = DAY
    PENDING = "pending"  # sorted set: threads with queued messages, by when they last moved

    @staticmethod
    def journal(team: str, channel: str, ts: str) -> str:
        return f"turn:{team}:{channel}:{ts}"

    @staticmethod
    def rate(scope: str, team: str, who: str, window: int, bucket: int) -> str:
        return f"rate:{scope}:{team}:{who}:{window}:{bucket}"

    @staticmethod
    def turns(key: ThreadKey) -> str:
        return f"conv:{key}:turns"

    @staticmethod
    def meta(key: ThreadKey) -> str:
        return f"conv:{key}:meta"

    @staticmethod
    def inbox(key: ThreadKey) -> str:
        return f"inbox:{key}"

    @staticmethod
    def lock(key: ThreadKey) -> str:
        return f"lock:{key}"

    @staticmethod
    def seen(team: str, channel: str, ts: str) -> str:
        return f"seen:{team}:{channel}:{ts}"

    @staticmethod
    def display_name(team: str, user: str) -> str:
        return f"name:{team}:{user}"

    @staticmethod
    def feedback(key: ThreadKey) -> str:
        return f"feedback:{key}"  # TTL: the conversation's

    # A rate bucket's keys share a hash tag, so one script may touch them in Redis Cluster too.
    # They expire one window after their last use.
    @staticmethod
    def rate_calls(bucket: str) -> str:
        return f"rate:{{{bucket}}}:calls"

    @staticmethod
    def rate_held(bucket: str) -> str:
        return f"rate:{{{bucket}}}:held"

    @staticmethod
    def rate_pause(bucket: str) -> str:
        return f"rate:{{{bucket}}}:pause"

    @staticmethod
    def rate_active(bucket: str) -> str:
        return f"rate:{{{bucket}}}:active"


# KEYS: seen, inbox, meta, journal, pending. ARGV: message json, dedup ttl, inbox ttl,
# conversation ttl, follow (0/1), starts conversation (0/1), thread key, now, message ts.
# The inbox is ordered by the message's Slack ts, not by arrival: Slack (and Socket Mode's
# concurrent handling) may hand two quick messages over in either order.
# Returns 1 when accepted, 0 for a duplicate.
_ACCEPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[4], 'state', 'queued')
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[5], 'NX', ARGV[8], ARGV[7])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[3], 'followed', '1')
  if ARGV[6] == '1' then redis.call('HSETNX', KEYS[3], 'hydrated', '1') end
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return 1
"""

# KEYS: turns. ARGV: ts, replacement text ('' with ARGV[3] == 'delete' removes the turn).
# Deletes and edits are rare, so a scan of one conversation is fine here.
_REWRITE_TURN = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  if turn['ts'] == ARGV[1] and turn['role'] == 'user' then
    if ARGV[3] == 'delete' then
      redis.call('LREM', KEYS[1], 1, raw)
    else
      turn['text'] = ARGV[2]
      redis.call('LSET', KEYS[1], i - 1, cjson.encode(turn))
    end
    return 1
  end
end
return 0
"""

# KEYS: inbox, pending. ARGV: thread key. The thread leaves the pending set with its last message,
# in one step with the pop, so a message accepted meanwhile is never left unlisted.
_FINISH_HEAD = """
redis.call('ZPOPMIN', KEYS[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: one counter per limit. ARGV: limit_1, window_1, limit_2, window_2, ...
# Returns the index (1-based) of the first limit this message would exceed, or 0 after counting
# it in every window: a refused message uses up no budget, so a limit never compounds another.
_RATE = """
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count + 1 > tonumber(ARGV[2 * i - 1]) then return i end
end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
end
return 0
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# Sliding-window rate budget over several buckets at once: all claims are granted, or none.
# KEYS: per claim its calls, held and pause keys, then the first bucket's active key.
# ARGV: claims as JSON [{limit, window, headroom, mode, member, hold}], active member ('' for
# none), active ttl ms. Returns {granted 0/1, wait ms, active writers}. Time is Redis's own, so
# processes with skewed clocks still share one window.
_RATE_CLAIM = """
local claims = cjson.decode(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local active = 0
local active_key = KEYS[#claims * 3 + 1]
if ARGV[2] ~= '' then
  redis.call('ZADD', active_key, now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', active_key, ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', active_key, '-inf', now)
active = redis.call('ZCARD', active_key)
local wait = 0
for i, c in ipairs(claims) do
  local calls, held, pause = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local paused = redis.call('PTTL', pause)
  if paused > 0 then
    wait = math.max(wait, paused)
  else
    redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - c.window)
    redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
    local mine = c.mode == 'use' and redis.call('ZSCORE', held, c.member)
    local used = redis.call('ZCARD', calls) + redis.call('ZCARD', held)
    if not mine and used + c.headroom >= c.limit then
      local oldest = redis.call('ZRANGE', calls, 0, 0, 'WITHSCORES')
      local free_in = c.window
      if oldest[2] then free_in = tonumber(oldest[2]) + c.window - now end
      wait = math.max(wait, free_in, 1)
    end
  end
end
if wait > 0 then return {0, wait, active} end
for i, c in ipairs(claims) do
  local calls, held = KEYS[3 * i - 2], KEYS[3 * i - 1]
  if c.mode == 'hold' then
    redis.call('ZADD', held, now + c.hold, c.member)
    redis.call('PEXPIRE', held, c.hold)
  else
    if c.mode == 'use' then redis.call('ZREM', held, c.member) end
    redis.call('ZADD', calls, now, c.member)
    redis.call('PEXPIRE', calls, c.window)
  end
end
return {1, 0, active}
"""


class Store:
    """The bot's only door to Redis."""

    def __init__(self, url: str, *, conversation_ttl_days: float, lock_ttl_seconds: float = 30.0) -> None:
        # A bounded pool that makes callers wait for a free connection: hundreds of turns at
        # once share a bounded set of connections instead of failing with "too many connections".
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT_SECONDS,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=15,
            # A pooled connection is stale after a Redis restart: retry on a fresh one.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.redis: redis.Redis = redis.Redis(connection_pool=pool)
        self.conversation_ttl = max(1, int(conversation_ttl_days * DAY))
        # Renewed while held; expires this long after a holder dies, so no thread is blocked forever.
        self.lock_ttl_ms = max(100, int(lock_ttl_seconds * 1000))
        self._finish_head = self.redis.register_script(_FINISH_HEAD)
        self._rate = self.redis.register_script(_RATE)
        self._accept = self.redis.register_script(_ACCEPT)
        self._rewrite_turn = self.redis.register_script(_REWRITE_TURN)
        self._release_lock = self.redis.register_script(_RELEASE_LOCK)
        self._renew_lock = self.redis.register_script(_RENEW_LOCK)
        self._rate_claim = self.redis.register_script(_RATE_CLAIM)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    # -- inbox and dedup -------------------------------------------------------------------

    async def accept(self, message: IncomingMessage) -> bool:
        """Queue a message for its thread unless it was seen before. False means a duplicate."""
        key = message.key
        follow = message.action != "record"
        try:
            accepted = await self._accept(
                keys=[
                    Keys.seen(key.team, key.channel, message.ts),
                    Keys.inbox(key),
                    Keys.meta(key),
                    Keys.journal(key.team, key.channel, message.ts),
                    Keys.PENDING,
                ],
                args=[
                    message.to_json(),
                    Keys.DEDUP_TTL,
                    Keys.INBOX_TTL,
                    self.conversation_ttl,
                    int(follow),
                    int(message.starts_conversation),
                    str(key),
                    time.time(),
                    message.ts,
                ],
            )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        return bool(accepted)

    async def next_in_inbox(self, key: ThreadKey) -> IncomingMessage | None:
        head = await self.redis.zrange(Keys.inbox(key), 0, 0)
        raw = head[0] if head else None
        return IncomingMessage.from_json(raw) if raw else None

    async def finish_inbox_head(self, key: ThreadKey) -> None:
        """Drop the message at the head of the inbox once it has its outcome."""
        await self._finish_head(keys=[Keys.inbox(key), Keys.PENDING], args=[str(key)])

    async def threads_waiting(self, idle_seconds: float, limit: int = 100) -> list[ThreadKey]:
        """Threads with queued messages that nobody has moved for `idle_seconds`: their worker
        died, stopped, or is waiting to retry a delivery."""
        raw = await self.redis.zrangebyscore(
            Keys.PENDING, "-inf", time.time() - idle_seconds, start=0, num=limit
        )
        return [ThreadKey.parse(item) for item in raw]

    async def touch_waiting(self, key: ThreadKey) -> None:
        """Note that a thread's queue is being worked on (or will be retried from now)."""
        await self.redis.zadd(Keys.PENDING, {str(key): time.time()}, xx=True)

    # -- the turn journal ------------------------------------------------------------------

    async def journal(self, message: IncomingMessage) -> TurnRecord:
        raw = await self.redis.hgetall(Keys.journal(message.team, message.channel, message.ts))
        return TurnRecord.from_hash(raw)

    async def record_progress(self, message: IncomingMessage, **fields: str | int | None) -> None:
        """Write where a turn got to; None clears a field."""
        key = Keys.journal(message.team, message.channel, message.ts)
        updates = {name: str(value) for name, value in fields.items() if value is not None}
        cleared = [name for name, value in fields.items() if value is None]
        async with self.redis.pipeline(transaction=True) as pipe:
            if updates:
                pipe.hset(key, mapping=updates)
            if cleared:
                pipe.hdel(key, *cleared)
            pipe.expire(key, Keys.JOURNAL_TTL)
            await pipe.execute()

    async def count_attempt(self, message: IncomingMessage) -> int:
        key = Keys.journal(message.team, message.channel, message.ts)
        return int(await self.redis.hincrby(key, "attempts", 1))

    # -- abuse limits ----------------------------------------------------------------------

    async def over_limit(self, team: str, checks: list[tuple[str, str, int, int]]) -> int:
        """Count one message against each (scope, who, limit, window seconds); return the
        1-based index of the first limit it exceeds, or 0."""
        now = int(time.time())
        keys = [Keys.rate(scope, team, who, window, now // window) for scope, who, _, window in checks]
        args: list[int] = []
        for _, _, limit, window in checks:
            args += [limit, window]
        try:
            return int(await self._rate(keys=keys, args=args))
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    async def inbox_size(self, key: ThreadKey) -> int:
        return int(await self.redis.zcard(Keys.inbox(key)))

    # -- per-thread lock -------------------------------------------------------------------

    async def acquire_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(await self.redis.set(Keys.lock(key), token, nx=True, px=self.lock_ttl_ms))

    async def renew_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(await self._renew_lock(keys=[Keys.lock(key)], args=[token, self.lock_ttl_ms]))

    async def release_lock(self, key: ThreadKey, token: str) -> None:
        await self._release_lock(keys=[Keys.lock(key)], args=[token])

    # -- conversations ---------------------------------------------------------------------

    async def is_followed(self, key: ThreadKey) -> bool:
        try:
            return await self.redis.hget(Keys.meta(key), "followed") == "1"
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    async def is_hydrated(self, key: ThreadKey) -> bool:
        return await self.redis.hget(Keys.meta(key), "hydrated") == "1"

    async def append_turns(self, key: ThreadKey, *turns: Turn) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(Keys.turns(key), *(turn.to_json() for turn in turns))
            pipe.expire(Keys.turns(key), self.conversation_ttl)
            pipe.expire(Keys.meta(key), self.conversation_ttl)
            await pipe.execute()

    async def prepend_history(self, key: ThreadKey, turns: list[Turn]) -> None:
        """Put earlier thread messages (read from Slack) before what is stored; mark it read."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if turns:
                pipe.lpush(Keys.turns(key), *(turn.to_json() for turn in reversed(turns)))
                pipe.expire(Keys.turns(key), self.conversation_ttl)
            pipe.hset(Keys.meta(key), "hydrated", "1")
            pipe.expire(Keys.meta(key), self.conversation_ttl)
            await pipe.execute()

    async def recent_turns(self, key: ThreadKey, limit: int) -> list[Turn]:
        """The newest `limit` turns, oldest first; never reads more of the history than that."""
        raw = await self.redis.lrange(Keys.turns(key), -limit, -1)
        return [Turn.from_json(item) for item in raw]

    async def stored_ts(self, key: ThreadKey) -> set[str]:
        return {Turn.from_json(item).ts for item in await self.redis.lrange(Keys.turns(key), 0, -1)}

    async def reset(self, key: ThreadKey) -> None:
        """Forget a conversation's turns; the bot keeps following the thread."""
        await self.redis.delete(Keys.turns(key))

    async def remove_user_message(self, key: ThreadKey, ts: str) -> bool:
        return bool(await self._rewrite_turn(keys=[Keys.turns(key)], args=[ts, "", "delete"]))

    async def edit_user_message(self, key: ThreadKey, ts: str, text: str) -> bool:
        return bool(await self._rewrite_turn(keys=[Keys.turns(key)], args=[ts, text, "edit"]))

    # -- cached Slack display names --------------------------------------------------------

    async def cached_name(self, team: str, user: str) -> str | None:
        return await self.redis.get(Keys.display_name(team, user))

    async def cache_name(self, team: str, user: str, name: str) -> None:
        await self.redis.set(Keys.display_name(team, user), name, ex=Keys.NAME_TTL)

    # -- feedback ----------------------------------------------------------------------------

    async def record_feedback(self, vote: FeedbackVote) -> None:
        """Keep a vote beside the conversation it rates; a person's later click replaces it."""
        key = ThreadKey(vote.team, vote.channel, vote.thread)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(Keys.feedback(key), f"{vote.answer_ts}:{vote.user}", vote.to_json())
                pipe.expire(Keys.feedback(key), self.conversation_ttl)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    async def feedback_votes(self, key: ThreadKey) -> list[FeedbackVote]:
        raw = await self.redis.hgetall(Keys.feedback(key))
        return [FeedbackVote(**json.loads(value)) for value in raw.values()]

    # -- the shared Slack rate budget --------------------------------------------------------

    async def claim_rate(
        self, claims: list[RateClaim], *, writer: str = "", writer_ttl_ms: int = 0
    ) -> RateGrant:
        """Take slots from rate buckets, all or none (see `_RATE_CLAIM`); `writer` marks an
        answer in flight on the first bucket, so that each can be given its fair share."""
        keys = [
            k
            for c in claims
            for k in (
                Keys.rate_calls(c.bucket.name),
                Keys.rate_held(c.bucket.name),
                Keys.rate_pause(c.bucket.name),
            )
        ]
        keys.append(Keys.rate_active(claims[0].bucket.name))
        spec = [
            {"limit": c.bucket.limit, "window": c.bucket.window_ms, "headroom": c.headroom,
             "mode": c.mode, "member": c.member, "hold": c.hold_ms}
            for c in claims
        ]  # fmt: skip
        granted, wait_ms, active = await self._rate_claim(
            keys=keys, args=[json.dumps(spec), writer, max(writer_ttl_ms, 1)]
        )
        return RateGrant(bool(granted), int(wait_ms) / 1000, int(active))

    async def release_rate_hold(self, bucket: RateBucket, member: str) -> None:
        """Give back a slot held for a call that will not be made."""
        await self.redis.zrem(Keys.rate_held(bucket.name), member)

    async def pause_rate(self, bucket: RateBucket, seconds: float) -> None:
        """Slack said 429: no process calls this bucket until its Retry-After has passed."""
        key = Keys.rate_pause(bucket.name)
        milliseconds = max(1, int(seconds * 1000))
        if await self.redis.pttl(key) < milliseconds:
            await self.redis.set(key, "1", px=milliseconds)

    async def leave_rate(self, bucket: RateBucket, writer: str) -> None:
        await self.redis.zrem(Keys.rate_active(bucket.name), writer)

    async def debug_dump(self, key: ThreadKey) -> dict[str, Any]:
        """The stored record of one conversation, for tests and admin commands."""
        return {
            "meta": await self.redis.hgetall(Keys.meta(key)),
            "turns": [asdict(t) for t in await self.recent_turns(key, 10_000)],
        }
