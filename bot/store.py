"""Everything Redis: key names and TTLs, conversation records, the per-thread inbox, dedup and locks.

Every key the bot uses is built by a function in `Keys`, with its TTL beside it. Steps that must
happen together (dedup + enqueue, compare-and-delete of a lock) are Lua scripts so that several bot
processes sharing one Redis never see half of one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

DAY = 24 * 3600
# Redis connections per process: one per command in flight, so a burst of hundreds of turns opens
# hundreds. A smaller pool makes commands queue, and a starved process then waits past the timeout.
POOL_SIZE = 1000
POOL_WAIT_SECONDS = 5.0

Action = Literal["answer", "record", "reset"]


@dataclass(frozen=True)
class ThreadKey:
    """One conversation: a Slack thread, or a DM's rolling top level (thread == "dm")."""

    team: str
    channel: str
    thread: str

    def __str__(self) -> str:
        return f"{self.team}:{self.channel}:{self.thread}"


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
    """One stored message of a conversation."""

    role: Literal["user", "assistant"]
    text: str
    ts: str
    user: str | None = None
    name: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        return cls(**json.loads(raw))


class StoreUnavailable(Exception):
    """Redis did not answer; callers tell the user to try again rather than go silent."""


class Keys:
    """Key names and their TTLs, in one place."""

    DEDUP_TTL = DAY  # Slack retries within minutes; a day is ample and cheap.
    INBOX_TTL = DAY
    NAME_TTL = DAY  # display names change rarely
    LOCK_TTL_MS = 30_000  # renewed while held; expires soon after a holder dies

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


# KEYS: seen, inbox, meta. ARGV: message json, dedup ttl, inbox ttl, conversation ttl,
# follow (0/1), starts conversation (0/1). Returns 1 when accepted, 0 for a duplicate.
_ACCEPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
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

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Store:
    """The bot's only door to Redis."""

    def __init__(self, url: str, *, conversation_ttl_days: float) -> None:
        # Past POOL_SIZE commands in flight, a command waits for a free connection: the default
        # pool raises instead, which a burst of a few hundred turns would take for an outage.
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
        self.redis: redis.Redis = redis.Redis.from_pool(pool)
        self.conversation_ttl = max(1, int(conversation_ttl_days * DAY))
        self._accept = self.redis.register_script(_ACCEPT)
        self._rewrite_turn = self.redis.register_script(_REWRITE_TURN)
        self._release_lock = self.redis.register_script(_RELEASE_LOCK)
        self._renew_lock = self.redis.register_script(_RENEW_LOCK)

    async def close(self) -> None:
        await self.redis.aclose()

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
                keys=[Keys.seen(key.team, key.channel, message.ts), Keys.inbox(key), Keys.meta(key)],
                args=[
                    message.to_json(),
                    Keys.DEDUP_TTL,
                    Keys.INBOX_TTL,
                    self.conversation_ttl,
                    int(follow),
                    int(message.starts_conversation),
                ],
            )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        return bool(accepted)

    async def next_in_inbox(self, key: ThreadKey) -> IncomingMessage | None:
        raw = await self.redis.lindex(Keys.inbox(key), 0)
        return IncomingMessage.from_json(raw) if raw else None

    async def finish_inbox_head(self, key: ThreadKey) -> None:
        """Drop the message at the head of the inbox once it has its outcome."""
        await self.redis.lpop(Keys.inbox(key))

    async def inbox_size(self, key: ThreadKey) -> int:
        return int(await self.redis.llen(Keys.inbox(key)))

    # -- per-thread lock -------------------------------------------------------------------

    async def acquire_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(await self.redis.set(Keys.lock(key), token, nx=True, px=Keys.LOCK_TTL_MS))

    async def renew_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(await self._renew_lock(keys=[Keys.lock(key)], args=[token, Keys.LOCK_TTL_MS]))

    async def release_lock(self, key: ThreadKey, token: str) -> None:
        await self._release_lock(keys=[Keys.lock(key)], args=[token])

    # -- conversations ---------------------------------------------------------------------

    async def is_followed(self, key: ThreadKey) -> bool:
        return await self.redis.hget(Keys.meta(key), "followed") == "1"

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

    async def debug_dump(self, key: ThreadKey) -> dict[str, Any]:
        """The stored record of one conversation, for tests and admin commands."""
        return {
            "meta": await self.redis.hgetall(Keys.meta(key)),
            "turns": [asdict(t) for t in await self.recent_turns(key, 10_000)],
        }
