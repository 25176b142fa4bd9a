"""Everything Redis: key names and TTLs, conversation records, the per-thread inbox, dedup and locks.

Every key the bot uses is built by a function in `Keys`, with its TTL beside it. Steps that must
happen together (dedup + enqueue, compare-and-delete of a lock) are Lua scripts so that several bot
processes sharing one Redis never see half of one.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
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

Action = Literal["answer", "record", "reset", "forget"]


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
    reply_to: str | None = None  # an answer: the ts of the question it answered

    def to_json(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        # Fields this version does not know (written by a newer one) are skipped, not fatal.
        record = json.loads(raw)
        return cls(**{k: v for k, v in record.items() if k in _TURN_FIELDS})


_TURN_FIELDS = {f.name for f in fields(Turn)}


@dataclass(frozen=True)
class SummaryState:
    """A conversation's rolling summary: `text` covers every turn up to and including the one at
    `upto` (a Slack ts). `epoch` changes whenever stored turns are deleted or rewritten, so a
    summary computed from turns that have since changed is never saved."""

    text: str | None
    upto: str | None
    epoch: str


@dataclass(frozen=True)
class Forgotten:
    """What forgetting a person deleted."""

    messages: int  # their turns and the bot's answers to them
    conversations: int  # conversations that held any
    records: int  # other personal records (feedback) and entries in them


@dataclass(frozen=True)
class StoredConversation:
    """A conversation as Redis holds it, for the admin command line."""

    key: ThreadKey
    meta: dict[str, str]
    turns: list[Turn]
    expires_in: int  # seconds; -1 without expiry, -2 when gone

    @property
    def last_activity(self) -> float | None:
        """Unix time of the last message or reset."""
        if "updated" in self.meta:
            return float(self.meta["updated"])
        return float(self.turns[-1].ts) if self.turns else None

    def to_record(self) -> dict[str, Any]:
        return {
            "thread": str(self.key),
            "team": self.key.team,
            "channel": self.key.channel,
            "conversation": self.key.thread,
            "expires_in_seconds": self.expires_in,
            "meta": self.meta,
            "turns": [{k: v for k, v in asdict(turn).items() if v is not None} for turn in self.turns],
        }


class StoreUnavailable(Exception):
    """Redis did not answer; callers tell the user to try again rather than go silent."""


class Keys:
    """Key names and their TTLs, in one place."""

    DEDUP_TTL = DAY  # Slack retries within minutes; a day is ample and cheap.
    INBOX_TTL = DAY
    NAME_TTL = DAY  # display names change rarely
    LOCK_TTL_MS = 30_000  # renewed while held; expires soon after a holder dies
    SUMMARY_LOCK_TTL_MS = 120_000  # renewed after each summary call; a dead holder's expires

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
    def summary_lock(key: ThreadKey) -> str:
        return f"summarising:{key}"

    @staticmethod
    def seen(team: str, channel: str, ts: str) -> str:
        return f"seen:{team}:{channel}:{ts}"

    @staticmethod
    def display_name(team: str, user: str) -> str:
        return f"name:{team}:{user}"

    @staticmethod
    def user_index(team: str, user: str) -> str:
        """A set of the keys that hold a person's data (their conversations' turn lists, and any
        per-person record another feature registers), so forgetting them needs no SCAN."""
        return f"user:{team}:{user}"

    # Keys of per-person records kept by other features (feedback on answers). Forgetting a person
    # also scans these for records naming them that were not registered in their index.
    PERSONAL_RECORD_PATTERNS = ("feedback:*",)

    @staticmethod
    def thread_of_turns(name: str) -> ThreadKey | None:
        """The conversation whose turn list `name` is, or None for any other key."""
        parts = name.split(":")
        if len(parts) == 5 and parts[0] == "conv" and parts[4] == "turns":
            return ThreadKey(parts[1], parts[2], parts[3])
        return None


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

# KEYS: turns, meta. ARGV: ts, replacement text, 'edit' or 'delete', conversation ttl. Deleting a
# person's message also drops the bot's answer to it, which may quote it. Deletes and edits are
# rare, so a scan of one conversation is fine here. A summary that covers the turn may quote it
# too, so it is dropped (and rebuilt from the turns as they are now); the epoch bump stops a
# summary being computed meanwhile from saving the old text.
_REWRITE_TURN = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local found = false
for i, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  if turn['ts'] == ARGV[1] and turn['role'] == 'user' then
    found = true
    if ARGV[3] == 'delete' then
      redis.call('LREM', KEYS[1], 1, raw)
    else
      turn['text'] = ARGV[2]
      redis.call('LSET', KEYS[1], i - 1, cjson.encode(turn))
    end
  elseif ARGV[3] == 'delete' and turn['reply_to'] == ARGV[1] then
    redis.call('LREM', KEYS[1], 1, raw)
  end
end
if not found then return 0 end
redis.call('HINCRBY', KEYS[2], 'epoch', 1)
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
local upto = redis.call('HGET', KEYS[2], 'summary_upto')
if upto and tonumber(ARGV[1]) <= tonumber(upto) then
  redis.call('HDEL', KEYS[2], 'summary', 'summary_upto')
end
return 1
"""

# KEYS: meta, turns. ARGV: summary, upto ts, expected upto ('' for none), expected epoch, ttl.
# Saves only over the summary it was built from, and only while the turns it read are unchanged.
_SAVE_SUMMARY = """
local found = redis.call('HMGET', KEYS[1], 'summary_upto', 'epoch')
if (found[1] or '') ~= ARGV[3] or (found[2] or '0') ~= ARGV[4] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'summary', ARGV[1], 'summary_upto', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: turns, meta. ARGV: user id, conversation ttl. Removes the person's turns and the bot's
# answers to them (which may quote them), keeps everyone else's in order, and drops the summary.
# Returns how many turns were removed.
_FORGET_IN_CONVERSATION = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local asked, keep, removed = {}, {}, 0
for _, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  if turn['role'] == 'user' and turn['user'] == ARGV[1] then
    asked[turn['ts']] = true
    removed = removed + 1
  elseif turn['role'] == 'assistant' and turn['reply_to'] and asked[turn['reply_to']] then
    removed = removed + 1
  else
    keep[#keep + 1] = raw
  end
end
if removed == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 1, #keep, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
end
if #keep > 0 and ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('HDEL', KEYS[2], 'summary', 'summary_upto')
redis.call('HINCRBY', KEYS[2], 'epoch', 1)
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return removed
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
        self.redis: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=15,
            # A pooled connection is stale after a Redis restart: retry on a fresh one.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.conversation_ttl = max(1, int(conversation_ttl_days * DAY))
        self._accept = self.redis.register_script(_ACCEPT)
        self._rewrite_turn = self.redis.register_script(_REWRITE_TURN)
        self._save_summary = self.redis.register_script(_SAVE_SUMMARY)
        self._forget_in_conversation = self.redis.register_script(_FORGET_IN_CONVERSATION)
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

    # -- one summary job per conversation, across processes ------------------------------------

    async def acquire_summary_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(await self.redis.set(Keys.summary_lock(key), token, nx=True, px=Keys.SUMMARY_LOCK_TTL_MS))

    async def renew_summary_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(
            await self._renew_lock(keys=[Keys.summary_lock(key)], args=[token, Keys.SUMMARY_LOCK_TTL_MS])
        )

    async def release_summary_lock(self, key: ThreadKey, token: str) -> None:
        await self._release_lock(keys=[Keys.summary_lock(key)], args=[token])

    # -- conversations ---------------------------------------------------------------------

    async def is_followed(self, key: ThreadKey) -> bool:
        return await self.redis.hget(Keys.meta(key), "followed") == "1"

    async def is_hydrated(self, key: ThreadKey) -> bool:
        return await self.redis.hget(Keys.meta(key), "hydrated") == "1"

    async def append_turns(self, key: ThreadKey, *turns: Turn) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(Keys.turns(key), *(turn.to_json() for turn in turns))
            pipe.expire(Keys.turns(key), self.conversation_ttl)
            pipe.hset(Keys.meta(key), "updated", int(time.time()))
            pipe.expire(Keys.meta(key), self.conversation_ttl)
            self._index_people(pipe, key, turns)
            await pipe.execute()

    async def prepend_history(self, key: ThreadKey, turns: list[Turn]) -> None:
        """Put earlier thread messages (read from Slack) before what is stored; mark it read."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if turns:
                pipe.lpush(Keys.turns(key), *(turn.to_json() for turn in reversed(turns)))
                pipe.expire(Keys.turns(key), self.conversation_ttl)
                self._index_people(pipe, key, turns)
            pipe.hset(Keys.meta(key), "hydrated", "1")
            pipe.expire(Keys.meta(key), self.conversation_ttl)
            await pipe.execute()

    def _index_people(self, pipe: Any, key: ThreadKey, turns: Iterable[Turn]) -> None:
        for user in {turn.user for turn in turns if turn.role == "user" and turn.user}:
            pipe.sadd(Keys.user_index(key.team, user), Keys.turns(key))
            pipe.expire(Keys.user_index(key.team, user), self.conversation_ttl)

    async def recent_turns(self, key: ThreadKey, limit: int) -> list[Turn]:
        """The newest `limit` turns, oldest first; never reads more of the history than that."""
        raw = await self.redis.lrange(Keys.turns(key), -limit, -1)
        return [Turn.from_json(item) for item in raw]

    async def tail(self, key: ThreadKey, skip: int, count: int) -> list[Turn]:
        """`count` turns ending `skip` turns before the newest, oldest first (fewer at the start)."""
        raw = await self.redis.lrange(Keys.turns(key), -(skip + count), -(skip + 1))
        return [Turn.from_json(item) for item in raw]

    async def summary(self, key: ThreadKey) -> SummaryState:
        text, upto, epoch = await self.redis.hmget(Keys.meta(key), "summary", "summary_upto", "epoch")
        return SummaryState(text or None, upto or None, epoch or "0")

    async def stored_ts(self, key: ThreadKey) -> set[str]:
        return {Turn.from_json(item).ts for item in await self.redis.lrange(Keys.turns(key), 0, -1)}

    async def save_summary(self, key: ThreadKey, text: str, upto: str, based_on: SummaryState) -> bool:
        """Store a summary of every turn up to `upto`, unless the conversation changed since
        `based_on` was read (reset, a deletion or edit, or another summary saved first)."""
        saved = await self._save_summary(
            keys=[Keys.meta(key), Keys.turns(key)],
            args=[text, upto, based_on.upto or "", based_on.epoch, self.conversation_ttl],
        )
        return bool(saved)

    async def reset(self, key: ThreadKey) -> None:
        """Forget a conversation's turns and summary; the bot keeps following the thread."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(Keys.turns(key))
            pipe.hdel(Keys.meta(key), "summary", "summary_upto")
            pipe.hincrby(Keys.meta(key), "epoch", 1)
            pipe.hset(Keys.meta(key), "updated", int(time.time()))
            pipe.expire(Keys.meta(key), self.conversation_ttl)
            await pipe.execute()

    async def remove_user_message(self, key: ThreadKey, ts: str) -> bool:
        """Delete a person's message and the bot's answer to it, and the summary if it covers them."""
        return bool(
            await self._rewrite_turn(
                keys=[Keys.turns(key), Keys.meta(key)], args=[ts, "", "delete", self.conversation_ttl]
            )
        )

    async def edit_user_message(self, key: ThreadKey, ts: str, text: str) -> bool:
        """Replace a person's message text, and drop the summary if it covers the old text."""
        return bool(
            await self._rewrite_turn(
                keys=[Keys.turns(key), Keys.meta(key)], args=[ts, text, "edit", self.conversation_ttl]
            )
        )

    # -- the right to be forgotten ---------------------------------------------------------

    async def index_personal_record(self, team: str, user: str, record_key: str, ttl_seconds: int) -> None:
        """Register a key that holds one person's data (e.g. their feedback), so that forgetting
        them deletes it. `ttl_seconds` should be the record's own TTL."""
        index = Keys.user_index(team, user)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(index, record_key)
            pipe.expire(index, max(ttl_seconds, self.conversation_ttl))
            await pipe.execute()

    async def forget_user(self, team: str, user: str, *, scan_conversations: bool = False) -> Forgotten:
        """Delete everything stored about a person in a workspace: their messages in every
        conversation (and the bot's answers to them), summaries that may quote them, their
        personal records, their cached name and their index. With `scan_conversations`, every
        conversation of the workspace is searched too, not only those their index names."""
        index = Keys.user_index(team, user)
        members: set[str] = set(await self.redis.smembers(index))
        if scan_conversations:
            members |= {name async for name in self.redis.scan_iter(match=f"conv:{team}:*:turns", count=1000)}
        messages = conversations = records = 0
        for member in sorted(members):
            thread = Keys.thread_of_turns(member)
            if thread is None:
                records += await self.redis.delete(member)
                continue
            removed = await self._forget_in_conversation(
                keys=[member, Keys.meta(thread)], args=[user, self.conversation_ttl]
            )
            if removed:
                messages += int(removed)
                conversations += 1
        for pattern in Keys.PERSONAL_RECORD_PATTERNS:
            async for name in self.redis.scan_iter(match=pattern, count=1000):
                records += await self._forget_in_record(name, user)
        await self.redis.delete(index, Keys.display_name(team, user))
        return Forgotten(messages=messages, conversations=conversations, records=records)

    async def _forget_in_record(self, name: str, user: str) -> int:
        """Delete a record that is the person's, or the entries in it that name them. Records of
        unknown shape are judged by whether their name or content carries the user id."""
        if user in name.split(":"):
            return int(await self.redis.delete(name))
        kind = await self.redis.type(name)
        names = re.compile(rf"(?<![A-Za-z0-9]){re.escape(user)}(?![A-Za-z0-9])").search
        if kind == "string":
            value = await self.redis.get(name)
            return int(await self.redis.delete(name)) if value and names(value) else 0
        if kind == "hash":
            record = await self.redis.hgetall(name)
            if user in record:  # a hash keyed by person: drop their entry only
                return int(await self.redis.hdel(name, user))
            if any(names(value) for value in record.values()):
                return int(await self.redis.delete(name))
            return 0
        if kind in ("list", "set", "zset"):
            if kind == "list":
                entries = await self.redis.lrange(name, 0, -1)
            elif kind == "set":
                entries = list(await self.redis.smembers(name))
            else:
                entries = await self.redis.zrange(name, 0, -1)
            theirs = [entry for entry in entries if names(entry)]
            for entry in theirs:
                if kind == "list":
                    await self.redis.lrem(name, 0, entry)
                elif kind == "set":
                    await self.redis.srem(name, entry)
                else:
                    await self.redis.zrem(name, entry)
            return len(theirs)
        return 0

    # -- cached Slack display names --------------------------------------------------------

    async def cached_name(self, team: str, user: str) -> str | None:
        return await self.redis.get(Keys.display_name(team, user))

    async def cache_name(self, team: str, user: str, name: str) -> None:
        await self.redis.set(Keys.display_name(team, user), name, ex=Keys.NAME_TTL)

    # -- for the admin command line -------------------------------------------------------

    async def conversation_keys(self, team: str | None = None) -> list[ThreadKey]:
        """Every stored conversation (of one workspace, or all), in key order."""
        found: set[ThreadKey] = set()
        async for name in self.redis.scan_iter(match=f"conv:{team or '*'}:*", count=1000):
            parts = name.split(":")
            if len(parts) == 5 and parts[4] in ("turns", "meta"):
                found.add(ThreadKey(parts[1], parts[2], parts[3]))
        return sorted(found, key=str)

    async def conversations_in(self, channel: str, thread: str) -> list[ThreadKey]:
        """The stored conversations of a channel's thread, in whichever workspace."""
        found = {
            ThreadKey(*name.split(":")[1:4])
            async for name in self.redis.scan_iter(match=f"conv:*:{channel}:{thread}:*", count=1000)
        }
        return sorted(found, key=str)

    async def stored_conversation(self, key: ThreadKey) -> StoredConversation | None:
        """One conversation as stored, all of it; None when nothing is stored."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(Keys.meta(key))
            pipe.lrange(Keys.turns(key), 0, -1)
            pipe.ttl(Keys.turns(key))
            pipe.ttl(Keys.meta(key))
            meta, raw, turns_ttl, meta_ttl = await pipe.execute()
        if not meta and not raw:
            return None
        return StoredConversation(
            key=key,
            meta=meta,
            turns=[Turn.from_json(item) for item in raw],
            expires_in=max(turns_ttl, meta_ttl),
        )

    async def delete_conversation(self, key: ThreadKey) -> int:
        """Delete a conversation's turns, summary and bookkeeping; returns the turns deleted."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(Keys.turns(key))
            pipe.delete(Keys.turns(key), Keys.meta(key))
            turns, _ = await pipe.execute()
        return int(turns)

    async def teams_knowing(self, user: str) -> list[str]:
        """The workspaces whose per-person index names `user`."""
        found = {
            name.split(":")[1] async for name in self.redis.scan_iter(match=f"user:*:{user}", count=1000)
        }
        return sorted(found)

    async def count_keys(self, pattern: str) -> int:
        return len([name async for name in self.redis.scan_iter(match=pattern, count=1000)])
