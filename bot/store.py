"""Everything Redis: key names and TTLs, conversation records, the per-thread inbox, dedup, locks,
feedback votes and the Slack rate budget shared by every bot process.

Every key the bot uses is built by a function in `Keys`, with its TTL beside it. Steps that must
happen together (dedup + enqueue, compare-and-delete of a lock, taking rate-limit slots) are Lua
scripts so that several bot processes sharing one Redis never see half of one.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from typing import Any, Literal

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from bot import redis_url
from bot.pipelining import CLOSE_WAIT_SECONDS, CommandBatcher

log = logging.getLogger(__name__)

DAY = 24 * 3600
# Redis connections per process: one per command in flight. Past that a command waits (up to
# POOL_WAIT_SECONDS) for a free one; the default pool raises instead, which a burst of a few
# hundred turns would take for an outage.
POOL_SIZE = 500
POOL_WAIT_SECONDS = 10
# Journals a take of a thread's next message declares, of the messages expected first (the oldest
# its process accepted): more are seldom waiting in one thread, and any other's is read next.
EXPECTED_HINTS = 8
# Reads of a conversation's turns before `forget me` takes a person's out of it, should they
# write there between a read and the step that removes them.
FORGET_ATTEMPTS = 5

Action = Literal["answer", "record", "reset", "forget"]


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
        # vars(): the fields as they are; asdict() deep-copies each value, a cost on every turn.
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> IncomingMessage:
        return cls(**json.loads(raw))


class Accepted(enum.IntEnum):
    DUPLICATE = 0  # seen before: nothing to do
    QUEUED = 1  # behind other messages of its thread
    FIRST = 2  # nothing else waiting in its thread; its lock not taken here (no token, or held)
    TAKEN = 3  # nothing else waiting in its thread, and its lock is now held for the caller


class LockRenewal(enum.IntEnum):
    """What renewing a thread's lock found."""

    RENEWED = 1
    TAKEN_BACK = 2  # it had expired (its holder stalled) and nobody had taken it: held again
    TAKEN_OVER = 0  # another worker holds it now: the holder must stand down
    RELEASED = -1  # not held, its message finished: by the holder just now, or by another worker


@dataclass(frozen=True)
class Fence:
    """A thread lock that must still be held, by `token`, for a Slack call to be made: the
    call that would show a new message of the answer to the message at `ts` (see
    `Store.claim_rate`), whose journal then notes that something may have been posted."""

    key: ThreadKey
    token: str
    ts: str


class LockLost(Exception):
    """The thread's lock is held by another worker now (this one stalled past its lifetime):
    that worker answers the message, so nothing more of this turn may be shown."""


@dataclass(frozen=True)
class Queued:
    """A message waiting in its thread's inbox, with its stored form (to remove exactly that)
    and its journal as it was when the message was taken."""

    message: IncomingMessage
    raw: str
    record: TurnRecord


@dataclass(frozen=True)
class Progress:
    """One step of a turn's journal: fields set (None clears one), and the turns it stored."""

    fields: Mapping[str, str | int | None] = field(default_factory=dict)
    turns: tuple[Turn, ...] = ()

    @classmethod
    def of(cls, *, turns: tuple[Turn, ...] = (), **fields: str | int | None) -> Progress:
        return cls(fields, turns)


@dataclass(frozen=True)
class Begun:
    """An answer's first step: the abuse limit it exceeds (1-based, 0 for none), that its
    message is gone, or what its prompt is built from."""

    over_limit: int
    deleted: bool = False  # deleted by its author after it was taken, before this step
    hydrated: bool = False
    summary: SummaryState | None = None
    newest_turns: list[Turn] = field(default_factory=list)
    # The question as edited after its turn took it (the step stored it so): for one not stored.
    edited: str | None = None


def _sent_before(ts: Any, before: str) -> bool:
    """Whether a waiting message's Slack ts is older than `before` (one that is not a ts: no)."""
    try:
        return Decimal(ts) < Decimal(before)
    except (ArithmeticError, TypeError, ValueError):
        return False


def _inbox_entry(raw: str) -> dict[str, Any]:
    """A waiting message's fields, as its inbox holds them; none for an entry that is no message
    (left by something else sharing the key prefix), which `forget me` passes over rather than
    fail on it for everyone in the workspace until the inbox expires."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _queued(found: Any) -> Queued | None:
    """A script's [message, journal as a flat list], or '' for none."""
    if not found:
        return None
    raw, flat = found
    record = TurnRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
    return Queued(IncomingMessage.from_json(raw), raw, record)


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
    reply_to: str | None = None  # an answer: the ts of the question it answered
    # Read back from Slack: the ts of the newest edit the page showed; an edit recorded since wins
    # only when newer (`_MERGE_READ_BACK`, which stores the turn without this).
    edited: str | None = None
    # An answer as its turn stores it: the ts of each of its messages in Slack, first to last (a
    # long one's several). Never stored, the answer being known by its first's: the step storing
    # it finds by them every copy read back from Slack (`_JOURNAL_STEP_FUNCTION`).
    messages: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> str:
        record = {
            k: v
            for k, v in vars(self).items()
            if k not in _TURN_UNSTORED and (v is not None or k in _TURN_CORE)
        }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        # Records written by older (or newer) versions may lack fields or carry others.
        record = json.loads(raw)
        return cls(**{k: v for k, v in record.items() if k in _TURN_FIELDS})


_TURN_FIELDS = {f.name for f in fields(Turn)}
_TURN_CORE = {"role", "text", "ts", "user", "name"}
_TURN_UNSTORED = {"messages"}


def _answers_of(key: ThreadKey, turns: Iterable[Turn]) -> list[str] | None:
    """The entries of a DM's answers index (`Keys.answers`) for `turns`; None for a conversation
    that keeps no index: only a DM's questions are looked up by their answers (bot/turn.py)."""
    if key.thread != "dm":
        return None
    return [f"{turn.reply_to}:{turn.ts}" for turn in turns if turn.role == "assistant" and turn.reply_to]


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
    waits: tuple[float, ...] = ()  # when not granted: each claim's own wait (0: it had room)


@dataclass(frozen=True)
class TurnRecord:
    """The journal of one turn: where it got to, so that a crash never loses or repeats it."""

    state: str = "queued"  # queued → working → answered | noted | failed
    sign: str = "none"  # the thinking sign shown: status, reaction or none
    user_turn_stored: bool = False
    answer: str | None = None  # produced but not yet delivered
    ending: str | None = None  # how that answer ended (an `Ending`'s value)
    answer_ts: str | None = None  # something of the answer is visible in Slack
    attempts: int = 0
    edited_text: str | None = None  # edited (as Slack writes it) while it waited for its turn
    deleted: bool = False  # deleted while it waited for its turn
    posting: bool = False  # a message of the answer may have been posted (see `Fence`)
    # Queued again after Redis lost its data while other processes were alive: one of them may
    # have answered it, or been told it was deleted, so Slack is asked first (bot/redis_loss.py).
    look_first: bool = False
    # Its person said `forget me` while it waited or was answered: nothing of its turn is stored.
    forgotten: bool = False

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TurnRecord:
        return cls(
            state=raw.get("state", "queued"),
            sign=raw.get("sign", "none"),
            user_turn_stored=raw.get("user_turn_stored") == "1",
            answer=raw.get("answer") or None,
            ending=raw.get("ending") or None,
            answer_ts=raw.get("answer_ts") or None,
            attempts=int(raw.get("attempts", "0")),
            edited_text=raw.get("edited_text"),
            deleted=raw.get("deleted") == "1",
            posting=raw.get("posting") == "1",
            look_first=raw.get("look") == "1",
            forgotten=raw.get("forgotten") == "1",
        )


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
            "turns": [
                {k: v for k, v in asdict(turn).items() if v is not None and k not in _TURN_UNSTORED}
                for turn in self.turns
            ],
        }


@dataclass(frozen=True)
class BreakerNews:
    """What a beat learns from Redis: the model's circuit breaker, shared by all processes, and
    whether Redis still knew this process."""

    open_seconds_left: float  # of a breaker a process opened; 0 when none is open
    failures_counted: int  # turns in a row that found the model down
    closed_token: str | None = None  # changes each time a probe finds the model back
    # False when the process's own entry was gone: Redis lost its data since its last beat.
    remembered: bool = True
    peers: int = 0  # other processes alive
    # Of the messages a beat asked about, those whose turn is over (answered, noted or failed).
    over: frozenset[tuple[str, str, str]] = frozenset()


@dataclass(frozen=True)
class SharedState:
    """What all the bot's processes share in Redis, for an operator (`python -m bot stats`)."""

    processes_alive: int  # processes whose last beat is still within their liveness
    threads_waiting: int  # threads with queued messages
    breaker: BreakerNews
    probing: bool  # a process is trying the model after a cooldown


class StoreUnavailable(Exception):
    """Redis did not answer; callers tell the user to try again rather than go silent."""


class ForgetIncomplete(Exception):
    """`forget me` could not take the person's turns out of a conversation they kept writing in
    (its text: that conversation's key): the person is told so (and asks again), never that they
    were forgotten."""


class Keys:
    """Key names and their TTLs, in one place. Every name starts with `prefix` (REDIS_KEY_PREFIX
    and a colon; nothing when it is unset), which in a Redis Cluster is a hash tag
    (bot/redis_url.py), so that every key of the bot lives in one hash slot there and one script
    may touch any of them. Each script declares every key it touches in KEYS (a cluster routes
    a script by them), also those it finds as it runs: see `_HEAD_WITH_JOURNAL`."""

    DEDUP_TTL = DAY  # Slack retries within minutes; a day is ample and cheap.
    INBOX_TTL = DAY
    NAME_TTL = DAY  # display names change rarely
    JOURNAL_TTL = DAY
    # A deleted message's tombstone, which a conversation read back from Slack meanwhile consults
    # (`Store.merge_read_back`): longer than any read-back waits for its pages.
    DELETED_TTL = 3600
    # An edited message's newest text, which such a read-back uses instead of what Slack showed it;
    # never longer than the stored conversations (`Store.edit_user_message`): it is their text.
    EDITED_TTL = DELETED_TTL
    SUMMARY_LOCK_TTL_MS = 120_000  # renewed after each summary call; a dead holder's expires
    LLM_FAILURES_TTL_MS = 300_000  # failed turns further apart than this are not "in a row"

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.pending = f"{prefix}pending"  # sorted set: threads with queued messages, by when they last moved
        self.processes = f"{prefix}processes"  # sorted set: bot processes, by when their liveness lapses
        self.processes_left = f"{prefix}processes-left"  # sorted set: processes that stopped, by when
        self.orphan_scan = f"{prefix}orphan-scan"  # set while one process looks for a gone one's threads
        self.llm_breaker = f"{prefix}llm-breaker"  # set for the cooldown when a process finds the model down
        self.llm_failures = f"{prefix}llm-failures"  # turns in a row that found the model down
        self.llm_probe = f"{prefix}llm-probe"  # the process whose turn tries the model after a cooldown
        self.llm_closed = f"{prefix}llm-breaker-closed"  # a new token each time a probe finds the model back
        self.lock_prefix = f"{prefix}lock:"  # + thread key
        # + team:channel:ts
        self.journal_prefix = f"{prefix}turn:"
        # Keys of per-person records kept by other features (feedback on answers). Forgetting a
        # person also scans these for records naming them that were not registered in their index.
        # Records that may hold people's data, each kind keyed by workspace first (`forget` scans them).
        self.personal_record_kinds = ("feedback",)
        self.personal_record_patterns = tuple(f"{prefix}{kind}:*" for kind in self.personal_record_kinds)

    def personal_record_patterns_of(self, team: str) -> tuple[str, ...]:
        return tuple(f"{self.prefix}{kind}:{team}:*" for kind in self.personal_record_kinds)

    def journal(self, team: str, channel: str, ts: str) -> str:
        return f"{self.journal_prefix}{team}:{channel}:{ts}"

    def deleted(self, team: str, channel: str, ts: str) -> str:
        return f"{self.prefix}deleted:{team}:{channel}:{ts}"

    def edited(self, team: str, channel: str, ts: str) -> str:
        """A person's edited message: its newest text, the edit's ts and its author (JSON), in the
        author's index (`user_index`), so that `forget me` takes it."""
        return f"{self.prefix}edited:{team}:{channel}:{ts}"

    def is_edit_record(self, name: str) -> bool:
        return self.unprefixed(name).startswith("edited:")

    def rate(self, scope: str, team: str, who: str, window: int, bucket: int) -> str:
        # Hashed: a counter needs no one's id in clear, and outlives no "forget me" as personal data.
        digest = hashlib.sha256(f"{team}:{who}".encode()).hexdigest()[:20]
        return f"{self.prefix}limit:{scope}:{digest}:{window}:{bucket}"

    def turns(self, key: ThreadKey) -> str:
        return f"{self.prefix}conv:{key}:turns"

    def meta(self, key: ThreadKey) -> str:
        return f"{self.prefix}conv:{key}:meta"

    def answers(self, key: ThreadKey) -> str:
        """A DM's index of the bot's answers (see `_ANSWERS_TO`), so that an edit or deletion of a
        question finds its answers without a scan. TTL: the conversation's."""
        return f"{self.prefix}conv:{key}:answers"

    def conversations(self, team: str = "*", channel: str = "*", thread: str = "*") -> str:
        """A SCAN pattern for conversations' keys (turns and meta)."""
        return f"{self.prefix}conv:{team}:{channel}:{thread}:*"

    def inbox(self, key: ThreadKey) -> str:
        return f"{self.prefix}inbox:{key}"

    def lock(self, key: ThreadKey) -> str:
        return f"{self.lock_prefix}{key}"

    def summary_lock(self, key: ThreadKey) -> str:
        return f"{self.prefix}summarising:{key}"

    def seen(self, team: str, channel: str, ts: str) -> str:
        return f"{self.prefix}seen:{team}:{channel}:{ts}"

    def forgotten_at(self, team: str, user: str) -> str:
        """The ts of a person's newest `forget me` (a string; DEDUP_TTL): a message of theirs sent
        before it and accepted after it is stored nowhere (`_ACCEPT`). Hashed, as a rate counter
        is: it outlives their `forget me`, so it names nobody in clear."""
        digest = hashlib.sha256(f"{team}:{user}".encode()).hexdigest()[:20]
        return f"{self.prefix}forgotten:{digest}"

    def display_name(self, team: str, user: str) -> str:
        return f"{self.prefix}name:{team}:{user}"

    def feedback(self, key: ThreadKey) -> str:
        return f"{self.prefix}feedback:{key}"  # TTL: the conversation's

    def user_index(self, team: str, user: str) -> str:
        """A set of the keys that hold a person's data (their conversations' turn lists, and any
        per-person record another feature registers), so forgetting them needs no SCAN."""
        return f"{self.prefix}user:{team}:{user}"

    def named_after(self, user: str) -> str:
        """A SCAN pattern for the keys whose name ends with a person's id, in any workspace: among
        them their index and cached display name (`team_of_person_key`)."""
        return f"{self.prefix}*:{user}"

    def team_of_person_key(self, name: str, user: str) -> str | None:
        """The workspace of `user`'s index or cached display name `name`; None for another key."""
        parts = self.unprefixed(name).split(":")
        if len(parts) == 3 and parts[0] in ("user", "name") and parts[2] == user:
            return parts[1]
        return None

    def unprefixed(self, name: str) -> str:
        return name.removeprefix(self.prefix)

    def thread_of(self, name: str) -> ThreadKey | None:
        """The conversation whose turn list or metadata `name` is, or None for any other key."""
        parts = self.unprefixed(name).split(":")
        if len(parts) == 5 and parts[0] == "conv" and parts[4] in ("turns", "meta"):
            return ThreadKey(parts[1], parts[2], parts[3])
        return None

    def thread_of_turns(self, name: str) -> ThreadKey | None:
        """The conversation whose turn list `name` is, or None for any other key."""
        return self.thread_of(name) if name.endswith(":turns") else None

    # A rate bucket's keys share a hash tag, so one script may touch them in Redis Cluster too
    # (where the prefix's tag, the first in the name, comes first). They expire one window after
    # their last use.
    def rate_calls(self, bucket: str) -> str:
        return f"{self.prefix}rate:{{{bucket}}}:calls"

    def rate_held(self, bucket: str) -> str:
        return f"{self.prefix}rate:{{{bucket}}}:held"

    def rate_pause(self, bucket: str) -> str:
        return f"{self.prefix}rate:{{{bucket}}}:pause"

    def rate_active(self, bucket: str) -> str:
        return f"{self.prefix}rate:{{{bucket}}}:active"


# A Lua function: whether Slack ts `a` is older than `b`. Compared as (seconds, microseconds)
# integers: a double loses the last digits of some, and strings of unlike lengths misorder.
_TS_BEFORE = """
local function ts_parts(ts)
  local seconds, fraction = string.match(ts or '', '^(%d+)%.?(%d*)$')
  if not seconds then return 0, 0 end
  return tonumber(seconds), tonumber(string.sub(fraction .. '000000', 1, 6))
end
local function ts_before(a, b)
  local a_seconds, a_micros = ts_parts(a)
  local b_seconds, b_micros = ts_parts(b)
  return a_seconds < b_seconds or (a_seconds == b_seconds and a_micros < b_micros)
end
"""

# KEYS: seen, inbox, meta, journal, pending, lock, its person's `forget me` mark
# (`Keys.forgotten_at`)[, a rate bucket's calls]. ARGV: message json,
# dedup ttl, inbox ttl, conversation ttl, follow (0/1), starts conversation (0/1), thread key, now,
# message ts, lock token, lock ttl ms, call id, bucket window ms, look in Slack first (0/1), the
# ts of the answer's first message shown already ('' for none), the thinking sign shown ('' for
# none), the ts its text was written at when not its own ('' for none: an edit that asks the bot).
# The inbox is ordered by the message's Slack ts, not by arrival: Slack (and Socket Mode's
# concurrent handling) may hand two quick messages over in either order.
# A message queued again after a loss (look in Slack first) whose journal says its turn is over
# (a worker finished it since the loss, after the beat that said which were waiting) is a
# duplicate too: queued again, its journal would say `queued` once more, and its turn come again.
# Returns {0} for a duplicate, {1} when queued behind other messages, {2} when first in line (but
# no token was given, or the thread's lock is held), and {3, message, journal} when first in line
# with the lock now taken for the token (the step `_TAKE` would be next, saved). With the lock
# taken and a call id, one call is counted in the rate bucket (see `Store.accept`).
# A message sent before its person's latest `forget me` and accepted only after it (its event came
# as `forget me` read the inboxes, or a Slack retry came later) is marked `forgotten`, as
# `_FORGET_WAITING` marks one waiting then: answered, and stored nowhere; not one whose text was
# written after it (an older message edited to ask the bot). One command more a message (the
# GET), no round trip.
_ACCEPT = (
    _TS_BEFORE
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return {0} end
if ARGV[14] == '1' then
  local state = redis.call('HGET', KEYS[4], 'state')
  if state == 'answered' or state == 'noted' or state == 'failed' then return {0} end
end
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local forgotten_at = redis.call('GET', KEYS[7])
local written = ARGV[17] ~= '' and ARGV[17] or ARGV[9]
if forgotten_at and ts_before(written, forgotten_at) then
  redis.call('HSET', KEYS[4], 'state', 'queued', 'forgotten', '1')
else
  redis.call('HSET', KEYS[4], 'state', 'queued')
end
if ARGV[14] == '1' then redis.call('HSET', KEYS[4], 'look', '1') end
if ARGV[15] ~= '' then redis.call('HSET', KEYS[4], 'answer_ts', ARGV[15]) end
if ARGV[16] ~= '' then redis.call('HSET', KEYS[4], 'sign', ARGV[16]) end
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[5], 'NX', ARGV[8], ARGV[7])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[3], 'followed', '1')
  if ARGV[6] == '1' then redis.call('HSETNX', KEYS[3], 'hydrated', '1') end
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
if redis.call('ZCARD', KEYS[2]) ~= 1 then return {1} end
if ARGV[10] == '' or not redis.call('SET', KEYS[6], ARGV[10], 'NX', 'PX', ARGV[11]) then return {2} end
redis.call('ZADD', KEYS[5], 'XX', ARGV[8], ARGV[7])
if ARGV[12] ~= '' then
  local clock = redis.call('TIME')
  redis.call('ZADD', KEYS[8], tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000), ARGV[12])
  redis.call('PEXPIRE', KEYS[8], ARGV[13])
end
return {3, ARGV[1], redis.call('HGETALL', KEYS[4])}
"""
)

# A Lua function that the scripts taking a message out of a stored conversation, or changing its
# text, are registered with (`Store.__init__`): the epoch bump stops a summary built before from
# being saved, and a summary that covers the message is dropped (rebuilt from the turns as they
# are now).
_CONVERSATION_CHANGED_AT = """
local function conversation_changed_at(meta, ts, ttl)
  redis.call('HINCRBY', meta, 'epoch', 1)
  if redis.call('TTL', meta) < 0 then redis.call('EXPIRE', meta, ttl) end
  local upto = redis.call('HGET', meta, 'summary_upto')
  if upto and tonumber(ts) <= tonumber(upto) then
    redis.call('HDEL', meta, 'summary', 'summary_upto')
  end
end
"""

# KEYS: turns, meta, the message's journal, the answers index, its tombstone, its edit record
# (`Keys.edited`)[, its author's index]. ARGV: ts, replacement text, 'edit' or 'delete',
# conversation ttl, the replacement as Slack wrote it, tombstone ttl (an edit: its record's), the
# edit's ts ('' when Slack gave none), the edit record (JSON; '' for none: no author's index
# either), whether it is a DM's top level (1/0).
# Deleting a person's message also drops the bot's answer to it, which may quote it, and so its
# entries in the index, and leaves a tombstone, so that a read-back from Slack that saw the message
# before it went does not put it back; its edit record goes. An edit leaves its newest text in its
# record (the tombstone's lifetime, within the conversations'), which such a read-back uses instead
# of the text it saw, registered in its author's index for `forget me` (none for a message that
# `forget me` marked, which stores nothing of it): only where a read-back may
# be under way, in a conversation the bot takes part in (`followed`, written as a message is
# accepted, before its turn reads anything back) or at a DM's top level (whose meta a loss took,
# while a DM thread's read-back copies its question), not for every edit in every channel. Slack's
# events of two edits may come in either order: one older than the edit recorded changes nothing
# (returns 0), nor does an edit of a message deleted already. Deletes and edits are rare, so a scan
# of one conversation is fine here. A summary that covers the turn may quote it too, so it is
# dropped (and rebuilt from the turns as they are now); the epoch bump stops a summary being
# computed meanwhile from saving the old text. A message still waiting for its turn (journal state
# `queued`) is no stored turn yet: its journal keeps the change (returns 2 when nothing else
# changed), which the turn reads when it takes the message, and the step that stores the message
# applies (`journal_step`), in case the change came after the turn had read the journal. One queued
# again after a loss may have copies all the same, read back from Slack by a newer turn (here, or in
# the DM thread under its answer: `TurnRunner._holding`): those are changed too, whatever marks its
# journal. Only a message at or before the conversation's `read_back_upto` can have such a copy
# (`_MERGE_READ_BACK`): for any other, as for every message waiting behind another in a normal
# thread, the conversation is not scanned.
_REWRITE_TURN = """
local journal
if ARGV[3] == 'delete' then
  redis.call('SET', KEYS[5], '1', 'EX', ARGV[6])
  redis.call('DEL', KEYS[6])
elseif redis.call('EXISTS', KEYS[5]) == 1 then
  return 0
else
  local newest = redis.call('GET', KEYS[6])
  if newest and ARGV[7] ~= '' and ts_before(ARGV[7], cjson.decode(newest)['ts']) then return 0 end
  if ARGV[8] ~= '' and (ARGV[9] == '1' or redis.call('HGET', KEYS[2], 'followed') == '1') then
    -- None for a message its person's `forget me` marked: nothing of it is stored
    -- (_FORGET_WAITING). The mark is read with the journal's state, which every edit reads below:
    -- no command more an edit (every edit in every channel the bot is in comes here).
    journal = redis.call('HMGET', KEYS[3], 'state', 'forgotten')
    if journal[2] ~= '1' then
      redis.call('SET', KEYS[6], ARGV[8], 'EX', ARGV[6])
      redis.call('SADD', KEYS[7], KEYS[6])
      redis.call('EXPIRE', KEYS[7], ARGV[4])
    end
  end
end
local state
if journal then state = journal[1] else state = redis.call('HGET', KEYS[3], 'state') end
local queued = state == 'queued'
if queued then
  if ARGV[3] == 'delete' then
    redis.call('HSET', KEYS[3], 'deleted', '1')
  else
    redis.call('HSET', KEYS[3], 'edited_text', ARGV[5], 'edited_readable', ARGV[2])
  end
  -- A copy can only have been read back with the newest ts read back at or after it: else no scan.
  local upto = redis.call('HGET', KEYS[2], 'read_back_upto')
  if not upto or ts_before(upto, ARGV[1]) then return 2 end
end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local found = false
for i, raw in ipairs(items) do
  -- Only a turn whose JSON holds the ts can be the message or an answer to it: the others are not
  -- decoded (a 4,000-turn DM: 18 ms of Redis's time an edit, decoding each, before).
  local turn = string.find(raw, ARGV[1], 1, true) and cjson.decode(raw) or {}
  if turn['ts'] == ARGV[1] and turn['role'] == 'user' then
    found = true
    if ARGV[3] == 'delete' then
      redis.call('LREM', KEYS[1], 1, raw)
    else
      turn['text'] = ARGV[2]
      redis.call('LSET', KEYS[1], i - 1, cjson.encode(turn))
    end
  elseif ARGV[3] == 'delete' and turn['reply_to'] == ARGV[1] then
    -- Also an answer read back from Slack to a message stored without a turn (no text): the
    -- conversation changed all the same.
    found = true
    redis.call('LREM', KEYS[1], 1, raw)
  end
end
if not found then return queued and 2 or 0 end
if ARGV[3] == 'delete' then
  redis.call('ZREMRANGEBYLEX', KEYS[4], '[' .. ARGV[1] .. ':', '(' .. ARGV[1] .. ';')
  restamp(KEYS[4], stamp_of(#items, items[#items]), KEYS[1], ARGV[4])
end
conversation_changed_at(KEYS[2], ARGV[1], ARGV[4])
return 1
"""

# A DM's answers index (`Keys.answers`): a sorted set whose members, all scored 0, are "question
# ts:answer ts", one for each of the bot's stored answers, so that the answers to a question are
# one range by name (ZRANGEBYLEX) rather than a scan of the conversation. Its stamp `indexed:N:ts`
# says that every answer among the turns list's N entries, the last of them at ts, is in it:
# written with the first turns of a conversation (the list did not exist), moved on by each step
# that stores turns or takes some out while it holds (`restamp`; a read-back's merge, too:
# `_MERGE_READ_BACK`), and written by the scan that
# indexes a conversation stored before the index (`_ANSWERS_TO`). The index is trusted only while
# the list is as stamped: a process of the version before the index, during a rolling deploy,
# stores answers without indexing them, which a bare "indexed" would hide from a deletion (the
# answer, and the copy of the question in the DM thread under it, would stay stored). Other
# writers (`_index_answers`) take the stamp away; the next look scans once. The index expires with
# the conversation: its TTL is set with every step that stores turns, as the turns' own is, and
# by `restamp` (a stamp that was all it held went, the index with it); should it go first all the
# same, the next look scans and indexes again.
_INDEX_ANSWERS_FUNCTION = """
local function stamp_of(length, last)
  return 'indexed:' .. length .. ':' .. (last and string.match(last, '"ts":"([^"]*)"') or '')
end

local function restamp(index, before, turns, ttl)
  local length = redis.call('LLEN', turns)
  if redis.call('ZREM', index, before) == 1 and length > 0 then
    redis.call('ZADD', index, 0, stamp_of(length, redis.call('LINDEX', turns, -1)))
    -- The stamp may have been all the index held: a new key then, which must expire too.
    redis.call('EXPIRE', index, ttl)
  else
    redis.call('ZREMRANGEBYLEX', index, '[indexed:', '(indexed;')
  end
end

local function index_answers(index, turns, answers, length, pushed, ttl)
  local members = {}
  for _, answer in ipairs(answers) do
    members[#members + 1] = 0
    members[#members + 1] = answer
  end
  local covered = false
  if length == #pushed then
    redis.call('ZREMRANGEBYLEX', index, '[indexed:', '(indexed;')
    covered = true
  else
    local before = stamp_of(length - #pushed, redis.call('LINDEX', turns, -#pushed - 1))
    covered = redis.call('ZREM', index, before) == 1
    if not covered then redis.call('ZREMRANGEBYLEX', index, '[indexed:', '(indexed;') end
  end
  if covered then
    members[#members + 1] = 0
    members[#members + 1] = stamp_of(length, pushed[#pushed])
  end
  if #members > 0 then redis.call('ZADD', index, unpack(members)) end
  redis.call('EXPIRE', index, ttl)
end
"""

# KEYS: turns, answers index, meta[, the message's tombstone]. ARGV: a person's message's ts[,
# tombstone ttl]. The ts of the bot's stored answers to it, for an edit or deletion: from the index,
# O(answers). A conversation whose index is not complete (stored before the index existed, or its
# index expired first) is scanned once, in Redis, and indexed as it goes (ZADD in batches, with the
# turns' own TTL), so that later looks use the index. The scan reads an answer's ts and question by
# pattern, not by decoding it (a third of the time for 4,000 turns): `"ts":"` cannot occur inside a
# JSON string, whose quotes are escaped. Also the DM thread whose read-back copied the message from
# Slack (`copy:<ts>`, see `_MERGE_READ_BACK`), when the answer it is under was not stored here
# (Redis lost it). With a tombstone (a deletion), it is left first, in the same step: a DM thread's
# read-back that copies the message after this leaves it out, and one that copied it before is
# found here; the note of that copy goes, its use over.
_ANSWERS_TO = """
local ts = ARGV[1]
if KEYS[4] then redis.call('SET', KEYS[4], '1', 'EX', ARGV[2]) end
local found = {}
local copied = redis.call('HGET', KEYS[3], 'copy:' .. ts)
if copied then table.insert(found, copied) end
if copied and KEYS[4] then redis.call('HDEL', KEYS[3], 'copy:' .. ts) end
local length = redis.call('LLEN', KEYS[1])
if length > 0 and redis.call('ZSCORE', KEYS[2], stamp_of(length, redis.call('LINDEX', KEYS[1], -1))) then
  for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ts .. ':', '(' .. ts .. ';')) do
    table.insert(found, string.sub(member, #ts + 2))
  end
  return found
end
local members = {}
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, raw in ipairs(items) do
  local at = string.find(raw, '"reply_to":"', 1, true)
  if at and string.find(raw, '"role":"assistant"', 1, true) then
    local question = string.match(raw, '^[^"]+', at + 12)
    local answer = string.match(raw, '^[^"]+', string.find(raw, '"ts":"', 1, true) + 6)
    members[#members + 1] = 0
    members[#members + 1] = question .. ':' .. answer
    if question == ts then table.insert(found, answer) end
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return found end
redis.call('ZREMRANGEBYLEX', KEYS[2], '[indexed:', '(indexed;')
members[#members + 1] = 0
members[#members + 1] = stamp_of(#items, items[#items])
for i = 1, #members, 1000 do
  redis.call('ZADD', KEYS[2], unpack(members, i, math.min(i + 999, #members)))
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return found
"""

# KEYS: turns, meta, the DM's answers index (`Keys.answers`), the DM's meta (or meta again), then
# per turn read back the tombstone of the message it goes with (its own; an answer's, its
# question's), then per turn its edit record (`Keys.edited`), then one per-person index per author
# among the turns. ARGV: conversation ttl, whether the conversation keeps an answers index (1: a
# DM's), the DM meta's field ('' for none) and value, the place among the turns of the message that
# field notes (0: none; the note is not written for a message left out as deleted: nothing would
# take it out), then a conversation's earlier messages read back from Slack (JSON, oldest first).
# Those not stored yet (by ts; nor the later messages of a long answer stored whole), nor deleted
# since they were read (their tombstone is there: the deletion found nothing here to take out), are
# merged (a person's message edited since it was read with its newest text, from its edit record:
# the edit found nothing here to change; unless the page showed a newer edit, `edited`, which is not
# stored) into the stored turns by ts, each stored turn kept where it is among the others (an answer
# before a question sent while it was written stays so), and the conversation is marked read. One
# step: a turn stored meanwhile by another process is neither lost nor read back a second time.
# `read_back_upto` (the newest ts read back) tells a later step that stores an older message, a
# person's or an answer, that a copy of it may be here (_JOURNAL_STEP_FUNCTION). Read-back is rare
# (a thread joined late, a conversation after a loss), so the scan of the stored turns costs no
# normal turn anything. A summary that covers where they went is dropped (rebuilt from the turns as
# they are now): it never saw them. The DM meta's field (`copy:<ts>`): a DM thread starts with a
# copy of the question its answer was for, and the DM notes where, so that the question's deletion
# or edit reaches the copy (`_ANSWERS_TO`). The people's indexes may name one whose turns all went:
# harmless.
_MERGE_READ_BACK = """
local first = 6
local n = #ARGV - first + 1
-- The tombstones and edit records, in batches: one command per thousand turns read back, not one
-- a turn.
local gone, edited = {}, {}
for i = 1, n, 1000 do
  local last = math.min(i + 999, n)
  local batch = {unpack(KEYS, 4 + i, 4 + last)}
  for j = i, last do batch[#batch + 1] = KEYS[4 + n + j] end
  local found = redis.call('MGET', unpack(batch))
  local size = last - i + 1
  for j = 1, size do gone[i + j - 1], edited[i + j - 1] = found[j], found[size + j] end
end
local items = n > 0 and redis.call('LRANGE', KEYS[1], 0, -1) or {}
local stored, known, answered = {}, {}, {}
for i, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  stored[i] = turn['ts']
  known[stored[i]] = true
  local question = turn['role'] == 'assistant' and turn['reply_to']
  if type(question) == 'string' then answered[question] = true end
end
local fresh, fresh_ts, answers = {}, {}, {}
for i = first, #ARGV do
  local turn = cjson.decode(ARGV[i])
  local ts = turn['ts']
  -- A stored answer is whole: Slack's later messages of a long one (their own ts) are in it.
  local question = turn['role'] == 'assistant' and turn['reply_to']
  local part = type(question) == 'string' and answered[question]
  if not known[ts] and not part and not gone[i - first + 1] then
    known[ts] = true
    local raw, shown = ARGV[i], turn['edited']
    local record = turn['role'] == 'user' and edited[i - first + 1]
    if record then record = cjson.decode(record) end
    if record and (not shown or ts_before(shown, record['ts'])) then turn['text'] = record['text'] end
    if record or shown then
      turn['edited'] = nil
      raw = cjson.encode(turn)
    end
    fresh[#fresh + 1], fresh_ts[#fresh + 1] = raw, ts
    if ARGV[2] == '1' and turn['role'] == 'assistant' and turn['reply_to'] then
      answers[#answers + 1] = turn['reply_to'] .. ':' .. ts
    end
  end
end
local last = items[#items]  -- the list's last turn after the merge
if #fresh > 0 then
  if #items == 0 or ts_before(fresh_ts[#fresh], stored[1]) then
    -- All older than what is stored (the usual case): in front of it, without a rewrite.
    last = last or fresh[#fresh]
    local reversed = {}
    for i = #fresh, 1, -1 do reversed[#reversed + 1] = fresh[i] end
    for i = 1, #reversed, 1000 do
      redis.call('LPUSH', KEYS[1], unpack(reversed, i, math.min(i + 999, #reversed)))
    end
  else
    local merged, i, j = {}, 1, 1
    while i <= #items or j <= #fresh do
      if j <= #fresh and (i > #items or ts_before(fresh_ts[j], stored[i])) then
        merged[#merged + 1], j = fresh[j], j + 1
      else
        merged[#merged + 1], i = items[i], i + 1
      end
    end
    redis.call('DEL', KEYS[1])
    for n = 1, #merged, 1000 do
      redis.call('RPUSH', KEYS[1], unpack(merged, n, math.min(n + 999, #merged)))
    end
    last = merged[#merged]
  end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  for k = 5 + 2 * n, #KEYS do
    redis.call('SADD', KEYS[k], KEYS[1])
    redis.call('EXPIRE', KEYS[k], ARGV[1])
  end
  conversation_changed_at(KEYS[2], fresh_ts[1], ARGV[1])
  local upto = redis.call('HGET', KEYS[2], 'read_back_upto')
  if not upto or ts_before(upto, fresh_ts[#fresh]) then
    redis.call('HSET', KEYS[2], 'read_back_upto', fresh_ts[#fresh])
  end
end
if ARGV[2] == '1' and #fresh > 0 then
  -- The answers read back join the index. One that covered the list as it was (its stamp,
  -- `_INDEX_ANSWERS_FUNCTION`), or a list begun here, covers it still: its stamp moves on with
  -- the list. Any other stamp goes: the next look scans once.
  local covered = #items == 0 or redis.call('ZREM', KEYS[3], stamp_of(#items, items[#items])) == 1
  redis.call('ZREMRANGEBYLEX', KEYS[3], '[indexed:', '(indexed;')
  local members = {}
  for _, answer in ipairs(answers) do
    members[#members + 1] = 0
    members[#members + 1] = answer
  end
  if covered then
    members[#members + 1] = 0
    members[#members + 1] = stamp_of(#items + #fresh, last)
  end
  if #members > 0 then redis.call('ZADD', KEYS[3], unpack(members)) end
  redis.call('EXPIRE', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[2], 'hydrated', '1')
redis.call('EXPIRE', KEYS[2], ARGV[1])
local noted = tonumber(ARGV[5])
if ARGV[3] ~= '' and not (noted > 0 and gone[noted]) then
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[1])
end
return #fresh
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

# KEYS: turns. ARGV: user id. The ts of the person's turns in a conversation: the journals that
# `_FORGET_IN_CONVERSATION` then declares.
_THEIR_TURNS = """
local found = {}
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local turn = cjson.decode(raw)
  if turn['role'] == 'user' and turn['user'] == ARGV[1] then table.insert(found, turn['ts']) end
end
return found
"""

# KEYS: a person's `forget me` mark (`Keys.forgotten_at`). ARGV: the ts of a `forget me`, the
# mark's TTL. The mark moves on, never back: two `forget me`s may end in either order (one said in
# a busy thread waits for its turn, one said in a DM after it does not), and a message sent
# between them, accepted after both, went before the later one.
_MARK_FORGOTTEN = """
local marked = redis.call('GET', KEYS[1])
if marked and not ts_before(marked, ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# KEYS: the journals of a person's messages still waiting for their turn in an inbox, sent before
# their `forget me`. Each still queued is marked `forgotten`: its turn answers it (they asked it)
# but stores neither it nor its answer, nor adds its conversation to their index (see
# _JOURNAL_STEP_FUNCTION). One whose turn began meanwhile stored its question, and added its
# conversation to their index, before this step: `forget me`, reading that index after it, takes
# the question and marks it as being answered (_FORGET_IN_CONVERSATION). Returns how many it marked.
_FORGET_WAITING = """
local marked = 0
for _, journal in ipairs(KEYS) do
  if redis.call('HGET', journal, 'state') == 'queued' then
    redis.call('HSET', journal, 'forgotten', '1')
    marked = marked + 1
  end
end
return marked
"""

# KEYS: turns, meta, answers index, the meta of the channel's DM conversation (a DM thread's
# copies are noted there: `copy:<ts>`), then the journals of the person's messages (`_THEIR_TURNS`).
# ARGV: user id, conversation ttl, then the ts of those messages, in the order of their journals.
# Removes the person's turns and the bot's answers to them (which may quote them) with their
# entries in the index, keeps everyone else's in order, and drops the summary. The journals of
# their finished messages lose the text they may hold (an edit made while the message waited, an
# answer kept for a retry), and are marked `forgotten` so that a later edit keeps no record of it
# (_REWRITE_TURN), but keep their state, which says the message was answered: to a message
# queued again after a loss (_ACCEPT), to a beat (_BEAT), and to a stalled worker's lock renewal or
# fence (_RENEW_THREAD_LOCK, _RATE_CLAIM), where no journal at all means Redis lost its data and
# the turn goes on. A message still waiting or in flight keeps its journal's text, or its edit or
# answer would be lost; one in flight is marked `forgotten`, so that its answer is not stored after
# its question went (see _JOURNAL_STEP_FUNCTION). Returns how many turns were removed, or -1, with
# nothing changed, when the person has a turn whose journal was not declared (stored since
# `_THEIR_TURNS` read them): the caller reads them again. Every key it touches is declared, so
# that it runs on a Redis Cluster, or a proxy that checks, as on one Redis.
_FORGET_IN_CONVERSATION = """
local journal_of = {}
for i = 3, #ARGV do journal_of[ARGV[i]] = KEYS[i + 2] end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local asked, keep, removed = {}, {}, 0
for _, raw in ipairs(items) do
  local turn = cjson.decode(raw)
  if turn['role'] == 'user' and turn['user'] == ARGV[1] then
    if not journal_of[turn['ts']] then return -1 end
    asked[turn['ts']] = true
    removed = removed + 1
  elseif turn['role'] == 'assistant' and turn['reply_to'] and asked[turn['reply_to']] then
    removed = removed + 1
  else
    keep[#keep + 1] = raw
  end
end
if removed == 0 then return 0 end
for ts in pairs(asked) do
  local journal = journal_of[ts]
  local state = redis.call('HGET', journal, 'state')
  if state == 'answered' or state == 'noted' or state == 'failed' then
    redis.call('HDEL', journal, 'edited_text', 'edited_readable', 'answer')
    -- An edit of it from now on keeps no record of its text (_REWRITE_TURN reads this with the
    -- state, in the read every edit makes): its turn is gone, and their index with it.
    redis.call('HSET', journal, 'forgotten', '1')
  elseif state == 'working' then
    -- Being answered: its question is stored (and goes now), its answer comes later, linked to
    -- a question no later `forget me` could find. The step that stores it reads this.
    redis.call('HSET', journal, 'forgotten', '1')
  end
  redis.call('ZREMRANGEBYLEX', KEYS[3], '[' .. ts .. ':', '(' .. ts .. ';')
  redis.call('HDEL', KEYS[4], 'copy:' .. ts)
end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 1, #keep, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
end
if #keep > 0 and ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
restamp(KEYS[3], stamp_of(#items, items[#items]), KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], 'summary', 'summary_upto')
redis.call('HINCRBY', KEYS[2], 'epoch', 1)
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return removed
"""

# KEYS: a person's index, their cached name, the conversations' turn lists `forget me` went
# through (`Keys.turns`), then the edit records to delete. ARGV: user id, how many turn lists,
# then the index's other members it went through. The end of `forget me`, in one step: each turn
# list leaves the index unless a turn of theirs is in it now (a message they sent after `forget
# me`, stored as it ran, put it back; a turn stored after this step puts it back too), so that
# their next `forget me` finds it. Only a turn whose JSON names them is decoded.
_DROP_INDEX = """
local needle = '"user":"' .. ARGV[1] .. '"'
local taken = {unpack(ARGV, 3)}
for i = 3, 2 + tonumber(ARGV[2]) do
  local theirs = false
  for _, raw in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do
    if string.find(raw, needle, 1, true) then
      local turn = cjson.decode(raw)
      if turn['role'] == 'user' and turn['user'] == ARGV[1] then
        theirs = true
        break
      end
    end
  end
  if not theirs then taken[#taken + 1] = KEYS[i] end
end
for i = 3 + tonumber(ARGV[2]), #KEYS do
  redis.call('DEL', KEYS[i])
  taken[#taken + 1] = KEYS[i]
end
redis.call('DEL', KEYS[2])
for i = 1, #taken, 1000 do
  redis.call('SREM', KEYS[1], unpack(taken, i, math.min(i + 999, #taken)))
end
return #taken
"""

# The message a worker takes next comes with its journal (`Keys.journal`), read in the same step
# when the caller declared it: the message is found at the head of the inbox inside the step, so
# the caller names, as hints, the journals of the messages it expects there (those its process
# accepted for the thread and has not taken yet: `TurnRunner`), KEYS from `at` (`count` of them)
# with their ts in ARGV from `ts_at`. A head it did not name (accepted by another process, or
# taken by recovery) comes back alone, `{head}`, and the caller reads its journal next (one more
# round trip, off the usual path), rather than the step build a key name it was not given: a Redis
# Cluster routes a script by its KEYS, and some servers and proxies refuse undeclared keys.
_HEAD_WITH_JOURNAL = """
local function head_with_journal(inbox, at, count, ts_at)
  local head = redis.call('ZRANGE', inbox, 0, 0)[1]
  if not head then return nil end
  local ts = cjson.decode(head)['ts']
  for i = 0, count - 1 do
    if ARGV[ts_at + i] == ts then return {head, redis.call('HGETALL', KEYS[at + i])} end
  end
  return {head}
end
"""

# A thread lock's token starts with its process's id ("<process id>:<random>"); the process says
# it is alive in the processes' sorted set (`Store.beat`). A lock whose process stopped saying so
# (it died, or stalled past its liveness) or said it stopped (`Store.leave`) is taken over at once
# instead of when it expires. A process the set does not name is not taken for gone: after Redis
# lost its data, a process's locks taken since are named there only from its next beat (before,
# another process took them over meanwhile, and a message was asked of the model twice).
_HOLDER_IS_GONE_FUNCTION = """
local function holder_is_gone(holder, processes)
  local process = holder and string.match(holder, '^(%x+):')
  if not process then return false end
  local alive_until = redis.call('ZSCORE', processes, process)
  if not alive_until then return false end
  local clock = redis.call('TIME')
  return tonumber(alive_until) < tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
"""

# KEYS: lock, inbox, pending, processes, then the journals of the messages expected first (see
# _HEAD_WITH_JOURNAL). ARGV: token, lock ttl ms, thread key, now, then the ts of those messages.
# Takes the thread's lock (also from a holder whose process is gone) and returns its
# earliest waiting message with its journal, marking the thread as being worked on. Returns false
# when another worker holds the lock; an empty inbox releases the lock at once and returns ''
# (nothing to do). One round trip instead of five.
_TAKE = (
    _HEAD_WITH_JOURNAL
    + _HOLDER_IS_GONE_FUNCTION
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if not holder_is_gone(redis.call('GET', KEYS[1]), KEYS[4]) then return false end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local found = head_with_journal(KEYS[2], 5, #KEYS - 4, 5)
if not found then
  -- Nothing waits (its inbox was emptied, or expired): the thread leaves the pending set too,
  -- or every recovery round would find it again, forever.
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[1])
  return ''
end
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[3])
return found
"""
)

# KEYS: processes, LLM breaker, LLM failures, closed token, processes left, then the journals of
# messages the process accepted and has not seen taken. ARGV: process id, liveness ms. A process
# says it is alive for the next `liveness` ms; entries gone for an hour are dropped. A process that
# left (`Store.leave`) stays gone: its last beat, sent before it left, can still run after that,
# and would make it alive again for its liveness (its locks waiting that long to be taken over).
# Returns the ms left of a breaker some process opened (negative when none is open), the failed
# turns counted, the closed token, 1 if Redis still knew the process (0 the first time, or when
# Redis lost its data), how many other processes are alive, and for each journal 1 when its turn
# is over (by any process).
_BEAT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local remembered = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
local left = redis.call('ZSCORE', KEYS[5], ARGV[1])
if not left then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
redis.call('PEXPIRE', KEYS[1], 86400000)
local failures = tonumber(redis.call('GET', KEYS[3]) or '0')
local peers = redis.call('ZCOUNT', KEYS[1], now, '+inf') - (left and 0 or 1)
local over = {}
for i = 6, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  over[i - 5] = (state == 'answered' or state == 'noted' or state == 'failed') and 1 or 0
end
return {redis.call('PTTL', KEYS[2]), failures, redis.call('GET', KEYS[4]), remembered, peers, over}
"""

# KEYS: processes, processes left. ARGV: process id. A process stopping says it was alive until a
# moment ago, rather than leave the set: its locks are taken over at once (see holder_is_gone),
# and the entry goes an hour later with those of processes that died. It is noted as left for
# that hour too, so that a beat of its that runs after this does not make it alive again (a
# process id names one run of a process: none beats again once it left).
_LEAVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZADD', KEYS[1], now - 1, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 3600000)
redis.call('PEXPIRE', KEYS[2], 3600000)
return 0
"""

# KEYS: LLM breaker, LLM probe. ARGV: process token, claim ms. After a cooldown one turn in all
# processes tries the model (the probe): the first to ask while no breaker is open, or the one that
# already holds the claim. Returns whether this process may probe, and the ms left of a breaker
# some process opened meanwhile (its probe failed), which it learns at once.
_CLAIM_PROBE = """
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return {0, left} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {0, 0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {1, 0}
"""

# KEYS: LLM probe. ARGV: process token. A probe ended with no verdict on the model (cancelled, or
# cut off after it spoke): another process may try at once.
_RELEASE_PROBE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: pending, scan gate. ARGV: latest last-moved time, limit, gate ms. The waiting threads
# unmoved since that time, whose locks `_ORPHANED_AMONG` then looks at. With a gate (ms > 0), only
# the first of all processes to ask within that time gets any: the look costs Redis three commands
# a waiting thread, and every process asks every second.
_IDLE_THREADS = """
if tonumber(ARGV[3]) > 0 and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return {} end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
"""

# KEYS: processes, then the locks of the threads in ARGV, in their order. ARGV: threads. Those whose
# lock is held by a process that is gone (see holder_is_gone). Apart from `_IDLE_THREADS`, so that
# each lock it reads is declared (it runs on a Redis Cluster, or a proxy that checks, as on one
# Redis); nothing is lost by the gap: `take_thread` checks the holder again as it takes over.
_ORPHANED_AMONG = (
    _HOLDER_IS_GONE_FUNCTION
    + """
local found = {}
for i, thread in ipairs(ARGV) do
  if holder_is_gone(redis.call('GET', KEYS[i + 1]), KEYS[1]) then table.insert(found, thread) end
end
return found
"""
)

# One step of a turn's journal (`Store.record_progress`): where the turn got to, and the turns it
# produced, written together. KEYS from k: journal, turns, meta, the DM's answers index
# (`Keys.answers`), then one per-person index per author among the turns. ARGV from a: journal
# ttl, conversation ttl, now, authors, turns, fields set, fields cleared, answers to index (-1 for a
# conversation that keeps no index: not a DM's), the ts of the person's message among the turns
# ('' for none), whether its turn only records it (0/1), the ts of the bot's answer among the turns
# and then of its later messages, space-separated ('' for none); then the turns (JSON), the
# answers to index ("question ts:answer ts"), the fields to set (name, value) and the names to
# clear. `read_back_upto`: the meta's, when the caller read
# it already (nil: read here, only for a step with a person's message or an answer). Returns true
# when a copy of that message or answer read back from Slack gave way.
#
# Storing a person's message is idempotent by its ts: a newer turn may have read it back from
# Slack (_MERGE_READ_BACK) before its own turn stores it (a turn that took it before a loss, or
# one queued again after it). That copy gives way to the one its turn stores, which the prompt
# must end with when it is answered; a message only recorded keeps the copy, in its place in
# Slack's order (unless changed while it waited: then its turn's copy, as changed, goes last).
# So is storing an answer: posted before a newer turn read the conversation back, stored after
# (its turn's last step was slow, or stood down and was resumed), its copy read back gives way
# to the one its turn stores (`answer_gives_way`). Only a message or answer at or before the
# newest read back (the meta's `read_back_upto`) costs the scan: no normal turn, whose message
# and answer are newer than anything read; its answer's step pays one HGET of the meta for that.
_JOURNAL_STEP_FUNCTION = (
    _CONVERSATION_CHANGED_AT
    + _TS_BEFORE
    + _INDEX_ANSWERS_FUNCTION
    + """
local function give_way(turns, meta, index, ts, ttl, keep)
  local items = redis.call('LRANGE', turns, 0, -1)
  for _, raw in ipairs(items) do
    if string.find(raw, ts, 1, true) then
      local turn = cjson.decode(raw)
      if turn['ts'] == ts and turn['role'] == 'user' then
        if keep then return 'kept' end
        redis.call('LREM', turns, 1, raw)
        -- A question's copy: no answer of the index goes with it. The stamp moves on with the
        -- list, as after a deletion, so that the step's own turns keep the index trusted.
        restamp(index, stamp_of(#items, items[#items]), turns, ttl)
        conversation_changed_at(meta, ts, ttl)
        return 'gave way'
      end
    end
  end
  return nil
end
-- An answer's copies read back from Slack are its messages (a long one's each apart), known by
-- their ts (`messages`, as its turn posted them), whatever the read linked each to: a later
-- message still being written had no buttons, and was linked to the latest message before it
-- (someone's, sent meanwhile), or to none when no question came before it in what was read; and
-- an answer by ts is no other answer to its question (one stopped, a second one). The first
-- becomes the answer as its turn stores it (whole, with its cost), where it is: Slack's order is
-- the conversation's. The others go, with their entries in a DM's index, whose stamp moves on
-- with the list; all of them go unless `in_place` (the step pushes the answer's question, last:
-- the answer must follow it). One pass of the list, a copy known by its first "ts" (its own: a
-- text's quotes are escaped), found by plain search: a Lua pattern, tried at each character of
-- every turn, cost Redis four to five times the list's read. Returns whether a copy was there.
local function answer_gives_way(turns, meta, index, raw, messages, ttl, indexed, in_place)
  local answer = cjson.decode(raw)
  local question = type(answer['reply_to']) == 'string' and answer['reply_to'] or nil
  local wanted = {}
  for ts in string.gmatch(messages, '%S+') do wanted[ts] = true end
  local items = redis.call('LRANGE', turns, 0, -1)
  local copies = {}
  for i, item in ipairs(items) do
    local at = string.find(item, '"ts":"', 1, true)
    if at and wanted[string.sub(item, at + 6, (string.find(item, '"', at + 6, true) or 0) - 1)] then
      local turn = cjson.decode(item)
      if turn['role'] == 'assistant' and wanted[turn['ts']] then
        local linked = type(turn['reply_to']) == 'string' and turn['reply_to'] or nil
        copies[#copies + 1] = {at = i, raw = item, ts = turn['ts'], question = linked}
      end
    end
  end
  if #copies == 0 then return false end
  if in_place then redis.call('LSET', turns, copies[1].at - 1, raw) end
  for c = in_place and 2 or 1, #copies do redis.call('LREM', turns, 1, copies[c].raw) end
  if indexed then
    for _, copy in ipairs(copies) do
      if copy.question then redis.call('ZREM', index, copy.question .. ':' .. copy.ts) end
    end
    if question then redis.call('ZADD', index, 0, question .. ':' .. answer['ts']) end
    restamp(index, stamp_of(#items, items[#items]), turns, ttl)
    -- With the turns' TTL, as each step gives it: the ZREMs may have emptied it (a new key then).
    redis.call('EXPIRE', index, ttl)
  end
  conversation_changed_at(meta, copies[1].ts, ttl)
  return true
end
local function journal_step(k, a, read_back_upto)
  local people, turns = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local set, cleared = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local indexed = tonumber(ARGV[a + 7])
  local at = a + 11
  local gave_way, copy_kept = false, false
  if turns > 0 then
    local pushed = {unpack(ARGV, at, at + turns - 1)}
    at = at + turns
    local answers = {unpack(ARGV, at, at + math.max(indexed, 0) - 1)}
    at = at + math.max(indexed, 0)
    -- The step that stores the message's own turn ends its wait; an edit or deletion that came
    -- after its worker read the journal (kept there, see _REWRITE_TURN) is applied here.
    local change = redis.call('HMGET', KEYS[k], 'state', 'edited_readable', 'deleted', 'forgotten')
    -- The answer's messages: its first's ts (the answer's), then its later messages' ones.
    local asked, messages = ARGV[a + 8], ARGV[a + 10]
    local answered = string.match(messages, '^%S*')
    if read_back_upto == nil and (asked ~= '' or answered ~= '') then
      read_back_upto = redis.call('HGET', KEYS[k + 2], 'read_back_upto')
    end
    if asked ~= '' then
      if read_back_upto and not ts_before(read_back_upto, asked) then
        local unchanged = not (change[1] == 'queued' and (change[2] or change[3])) and change[4] ~= '1'
        local keep = ARGV[a + 9] == '1' and unchanged
        local found = give_way(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], asked, ARGV[a + 1], keep)
        gave_way, copy_kept = found == 'gave way', found == 'kept'
      end
    end
    if change[4] == '1' then
      -- Its person said `forget me` while it was being answered (_FORGET_IN_CONVERSATION): the
      -- answer, which may quote them, is not stored after its question went.
      pushed = {}
    elseif change[1] == 'queued' and (change[2] or change[3]) then
      local kept = {}
      for _, raw in ipairs(pushed) do
        local turn = cjson.decode(raw)
        if turn['role'] ~= 'user' then
          table.insert(kept, raw)
        elseif change[3] ~= '1' then
          turn['text'] = change[2]
          table.insert(kept, cjson.encode(turn))
        end
      end
      pushed = kept
    end
    if copy_kept then
      local others = {}
      for _, raw in ipairs(pushed) do
        if cjson.decode(raw)['role'] ~= 'user' then table.insert(others, raw) end
      end
      pushed = others
    end
    if answered ~= '' and read_back_upto and not ts_before(read_back_upto, answered) then
      -- An answer whose question this step pushes (last) is pushed after it, its copies gone.
      local others, asking = {}, false
      for _, raw in ipairs(pushed) do
        local turn = cjson.decode(raw)
        local own = turn['role'] == 'assistant' and turn['ts'] == answered
        if own and answer_gives_way(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], raw, messages, ARGV[a + 1],
                                    indexed >= 0, not asking) then
          gave_way = true
          if asking then table.insert(others, raw) end
        else
          asking = asking or turn['role'] == 'user'
          table.insert(others, raw)
        end
      end
      pushed = others
    end
    if #pushed > 0 then
      local length = redis.call('RPUSH', KEYS[k + 1], unpack(pushed))
      -- Only a forgotten step drops answers, and it pushes nothing: the answers are stored.
      -- A list these turns began, or one the index covered until now, is covered still.
      if indexed >= 0 then index_answers(KEYS[k + 3], KEYS[k + 1], answers, length, pushed, ARGV[a + 1]) end
    end
    redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 1])
    redis.call('HSET', KEYS[k + 2], 'updated', ARGV[a + 2])
    redis.call('EXPIRE', KEYS[k + 2], ARGV[a + 1])
    for i = k + 4, k + 3 + (change[4] == '1' and 0 or people) do
      redis.call('SADD', KEYS[i], KEYS[k + 1])
      redis.call('EXPIRE', KEYS[i], ARGV[a + 1])
    end
  end
  if set > 0 then
    redis.call('HSET', KEYS[k], unpack(ARGV, at, at + 2 * set - 1))
    -- A turn over keeps no text in its journal (an edit made while it waited, an answer kept
    -- for a retry): nothing reads them then, and `forget me` finds no journal of a message that
    -- never joined a conversation (refused, failed, deleted), nor of one forgotten as it was
    -- being answered (its question gone). Read from the step's own fields: no HGET a step.
    for i = at, at + 2 * set - 2, 2 do
      local value = ARGV[i + 1]
      if ARGV[i] == 'state' and (value == 'answered' or value == 'noted' or value == 'failed') then
        redis.call('HDEL', KEYS[k], 'edited_text', 'edited_readable', 'answer')
      end
    end
    at = at + 2 * set
  end
  if cleared > 0 then redis.call('HDEL', KEYS[k], unpack(ARGV, at, at + cleared - 1)) end
  redis.call('EXPIRE', KEYS[k], ARGV[a])
  return gave_way
end
"""
)

_JOURNAL_STEP = _JOURNAL_STEP_FUNCTION + "journal_step(1, 1)"

# KEYS: inbox, pending, lock, the journals of the messages expected next (see _HEAD_WITH_JOURNAL),
# then the message's journal step (see above). ARGV: thread key, the finished message, lock token,
# now, how many messages are expected, their ts, then the journal step. Writes the message's
# outcome and takes it off the inbox in one step, so a crash leaves it either answered and gone,
# or still waiting with its journal as it was. The message is removed by value, not as the head:
# an earlier message may have arrived (late) while it was being answered. Returns the next waiting
# message with its journal (the lock is kept for it), or '' when the inbox is empty: then the
# thread leaves the pending set and the lock is released in the same step, so a message accepted
# a moment later finds the lock free and is never left unworked.
_FINISH = (
    _HEAD_WITH_JOURNAL
    + _JOURNAL_STEP_FUNCTION
    + """
local expected = tonumber(ARGV[5])
journal_step(4 + expected, 6 + expected)
redis.call('ZREM', KEYS[1], ARGV[2])
local found = head_with_journal(KEYS[1], 4, expected, 6)
if found then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[1])
  return found
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return ''
"""
)

# KEYS: one counter per limit, then the message's journal step. ARGV: how many limits, limit_1,
# window_1, limit_2, window_2, ..., turns to read, then the journal step. The step that starts
# an answer: if the message is within every abuse limit, it is counted in each window (a refused
# message uses up no budget, so a limit never compounds another), the journal step is written
# (the question joins the conversation as the turn is marked begun), and what the prompt is built
# from is read back. Returns {i} for the first limit exceeded, else {0, {hydrated, summary,
# summary_upto, epoch}, the newest turns, the question's text as an edit since its turn read the
# journal left it ('' for none)}; {-1} when the message was deleted while it waited. A forgotten
# question, which the step does not store, is answered as that edit says.
_BEGIN_ANSWER = (
    _JOURNAL_STEP_FUNCTION
    + """
local limits = tonumber(ARGV[1])
local journal = redis.call('HMGET', KEYS[limits + 1], 'state', 'deleted', 'edited_readable')
if journal[1] == 'queued' and journal[2] == '1' then return {-1} end
for i = 1, limits do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count + 1 > tonumber(ARGV[2 * i]) then return {i} end
end
for i = 1, limits do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i + 1]) end
end
local k, a = limits + 1, 2 * limits + 3
-- Read before the step (which changes none of these), so that it needs no read of its own.
local fields = {'hydrated', 'summary', 'summary_upto', 'epoch'}
local meta = redis.call('HMGET', KEYS[k + 2], 'read_back_upto', unpack(fields))
local read_back_upto = table.remove(meta, 1)
if journal_step(k, a, read_back_upto) then
  meta = redis.call('HMGET', KEYS[k + 2], unpack(fields))  -- a copy gave way: as it is now
end
local edited = journal[1] == 'queued' and journal[3] or ''
return {0, meta, redis.call('LRANGE', KEYS[k + 1], -tonumber(ARGV[a - 1]), -1), edited}
"""
)

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock, the journal of the message its holder works on. ARGV: token, ttl ms. A thread
# lock's renewal, which also takes back a lock that expired while its holder was stalled, if
# nobody took it meanwhile and that message is still unfinished (finished: the holder has just
# released the lock, or another worker answered the message during the stall). Returns 1
# renewed, 2 taken back, 0 held by another token, -1 neither held nor anything left to hold it for.
# No journal at all (a finished one is kept a day) means Redis lost its data under the turn (a
# restart without persistence, a failover to a replica behind): nobody else knows the message,
# so its holder takes the lock back and goes on.
_RENEW_THREAD_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
local state = redis.call('HGET', KEYS[2], 'state')
if state and state ~= 'queued' and state ~= 'working' then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""


# Sliding-window rate budget over several buckets at once: all claims are granted, or none.
# KEYS: per claim its calls, held and pause keys, then the first bucket's active key, then
# (with a fence) the thread's lock and the message's journal. ARGV: claims as JSON [{limit,
# window, headroom, mode, member, hold}], active member ('' for none), active ttl ms, then the
# fence's token ('' for none) and the lock's ttl ms. Returns {granted 1/0, or -1 when fenced
# off; wait ms; active writers}, and when refused, each claim's own wait ms (0: it had room).
# Time is Redis's own, so processes with skewed clocks still share one window.
# The fence: a lock held by another token refuses the call; an expired one is taken back while
# the message's turn is still unfinished (journal state `working`, or `queued` for a turn that
# closes an answer shown before it and notes it, as _RENEW_THREAD_LOCK takes it back: no worker
# holds the lock, so none is answering it) and refuses the call once another worker finished it.
# A call it lets through is noted in the message's journal (`posting`), for recovery to look in
# Slack first.
_RATE_CLAIM = """
local claims = cjson.decode(ARGV[1])
local fenced = ARGV[4] and ARGV[4] ~= ''
if fenced then
  local lock, journal = KEYS[#claims * 3 + 2], KEYS[#claims * 3 + 3]
  local holder = redis.call('GET', lock)
  if holder ~= ARGV[4] then
    -- No journal at all: Redis lost its data under the turn (see _RENEW_THREAD_LOCK).
    local state = redis.call('HGET', journal, 'state')
    if holder or (state and state ~= 'queued' and state ~= 'working') then return {-1, 0, 0} end
    redis.call('SET', lock, ARGV[4], 'PX', ARGV[5])
  end
end
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
local waits = {}
for i, c in ipairs(claims) do
  local calls, held, pause = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local paused = redis.call('PTTL', pause)
  waits[i] = 0
  if paused > 0 then
    waits[i] = paused
  else
    redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - c.window)
    redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
    local mine = c.mode == 'use' and redis.call('ZSCORE', held, c.member)
    local used = redis.call('ZCARD', calls) + redis.call('ZCARD', held)
    if not mine and used + c.headroom >= c.limit then
      local oldest = redis.call('ZRANGE', calls, 0, 0, 'WITHSCORES')
      local free_in = c.window
      if oldest[2] then free_in = tonumber(oldest[2]) + c.window - now end
      waits[i] = math.max(free_in, 1)
    end
  end
  wait = math.max(wait, waits[i])
end
if wait > 0 then return {0, wait, active, waits} end
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
local journal = KEYS[#claims * 3 + 3]
if fenced and redis.call('EXISTS', journal) == 1 then redis.call('HSET', journal, 'posting', '1') end
return {1, 0, active}
"""


class Store:
    """The bot's only door to Redis."""

    def __init__(
        self,
        url: str,
        *,
        conversation_ttl_days: float,
        lock_ttl_seconds: float = 15.0,
        key_prefix: str | None = None,
    ) -> None:
        """`key_prefix`: REDIS_KEY_PREFIX, which keeps bots that share one Redis apart."""
        self.keys = Keys(redis_url.key_prefix(url, key_prefix))
        # A bounded pool that makes callers wait for a free connection: hundreds of turns at
        # once share a bounded set of connections instead of failing with "too many connections".
        pool, self._sentinel = redis_url.connection_pool(
            url,
            self.keys.prefix,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT_SECONDS,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=15,
            # A pooled connection is stale after a Redis restart: retry on a fresh one.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
            # MOVED: in a Redis Cluster, the slot of the bot's keys has a new primary, which the
            # connection opens to next (bot/redis_url.py).
            retry_on_error=[RedisConnectionError, RedisTimeoutError, MovedError],
            # Off: a handshake for Redis Enterprise's maintenance events, one more round trip on
            # every new connection (and an error on open-source Redis), hundreds in a burst.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            # RESP2: a new connection needs no HELLO round trip (redis-py 8 defaults to RESP3).
            protocol=2,
        )
        self.redis: redis.Redis = redis.Redis.from_pool(pool)
        self.conversation_ttl = max(1, int(conversation_ttl_days * DAY))
        # Renewed while held; expires this long after a holder dies, so no thread is blocked forever.
        self.lock_ttl_ms = max(100, int(lock_ttl_seconds * 1000))
        self._take = self.redis.register_script(_TAKE)
        self._beat = self.redis.register_script(_BEAT)
        self._leave = self.redis.register_script(_LEAVE)
        self._claim_probe = self.redis.register_script(_CLAIM_PROBE)
        self._release_probe = self.redis.register_script(_RELEASE_PROBE)
        self._idle_threads = self.redis.register_script(_IDLE_THREADS)
        self._orphaned_among = self.redis.register_script(_ORPHANED_AMONG)
        self._finish = self.redis.register_script(_FINISH)
        self._begin_answer = self.redis.register_script(_BEGIN_ANSWER)
        self._accept = self.redis.register_script(_ACCEPT)
        self._rewrite_turn = self.redis.register_script(
            _CONVERSATION_CHANGED_AT + _TS_BEFORE + _INDEX_ANSWERS_FUNCTION + _REWRITE_TURN
        )
        self._answers_to = self.redis.register_script(_INDEX_ANSWERS_FUNCTION + _ANSWERS_TO)
        self._merge_read_back = self.redis.register_script(
            _CONVERSATION_CHANGED_AT + _TS_BEFORE + _INDEX_ANSWERS_FUNCTION + _MERGE_READ_BACK
        )
        self._save_summary = self.redis.register_script(_SAVE_SUMMARY)
        self._their_turns = self.redis.register_script(_THEIR_TURNS)
        self._forget_waiting = self.redis.register_script(_FORGET_WAITING)
        self._drop_index = self.redis.register_script(_DROP_INDEX)
        self._mark_forgotten = self.redis.register_script(_TS_BEFORE + _MARK_FORGOTTEN)
        self._forget_in_conversation = self.redis.register_script(
            _INDEX_ANSWERS_FUNCTION + _FORGET_IN_CONVERSATION
        )
        self._release_lock = self.redis.register_script(_RELEASE_LOCK)
        self._renew_lock = self.redis.register_script(_RENEW_LOCK)
        self._renew_thread_lock = self.redis.register_script(_RENEW_THREAD_LOCK)
        self._rate_claim = self.redis.register_script(_RATE_CLAIM)
        self._record_progress = self.redis.register_script(_JOURNAL_STEP)
        # The turns' commands go out in batches (bot/pipelining.py); admin and background work
        # uses the client directly.
        self._batch = CommandBatcher(self.redis)

    async def close(self, wait_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """`wait_seconds`: at most, for the batches on their way (bot/pipelining.py)."""
        await self._batch.close(wait_seconds)
        await self.redis.aclose()  # the client owns its pool (from_pool) and closes it
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def topology_problem(self) -> str | None:
        """What is wrong, if anything, between REDIS_URL's form and the Redis it names: one node
        of a Redis Cluster given as one Redis (which would refuse most of the bot's keys with
        MOVED), or the other way round. None when they agree, or when Redis cannot say now."""
        try:
            info = await self.redis.info("cluster")
        except (RedisError, OSError) as error:
            if self.keys.prefix and "cluster support disabled" in str(error):
                return (
                    "REDIS_URL is a redis+cluster:// URL but that Redis is not a cluster node: "
                    "write it redis://host:port (or rediss://)"
                )
            return None
        if not self.keys.prefix and str(info.get("cluster_enabled")) == "1":
            return (
                "REDIS_URL names a node of a Redis Cluster: write it "
                "redis+cluster://host:port[,host:port…] (rediss+cluster:// for TLS)"
            )
        return None

    # -- inbox and dedup -------------------------------------------------------------------

    async def accept(
        self,
        message: IncomingMessage,
        token: str = "",
        count_call: RateBucket | None = None,
        *,
        earlier_lost: bool = False,
        look_first: bool = False,
        answer_ts: str | None = None,
        sign: str | None = None,
        written: str | None = None,
    ) -> tuple[Accepted, Queued | None]:
        """Queue a message for its thread unless it was seen before. With a `token`, when it is
        first in line, the thread's lock is taken for it in the same step (Accepted.TAKEN), and
        the message comes back with its journal, as `take_thread` would return it.

        `count_call`: a rate bucket of the message's own new thread (its first thinking status),
        in which one call is counted when the lock is taken. Nothing can have used it yet, so
        there is room without asking; the call is then made without a claim of its own.

        A conversation that starts here is marked read from its start (nothing in Slack is
        missing from the store) unless `earlier_lost`: a DM's, once Redis lost its data.

        `look_first`: its journal says so (`TurnRecord.look_first`), in the same step, so that
        whichever worker takes it asks Slack first whether it is still there and answered.
        `answer_ts`: its answer began to show there (`TurnRecord.answer_ts`), and `sign`, the
        thinking sign shown for it (`TurnRecord.sign`), in the same step. `written`: when its text
        was written, if after its ts (an edit that asks the bot: the edit's ts), by which a
        `forget me` said before that and after the message does not take it (`_ACCEPT`)."""
        key = message.key
        follow = message.action != "record"
        try:
            accepted = await self._batch.run_script(
                self._accept,
                [
                    self.keys.seen(key.team, key.channel, message.ts),
                    self.keys.inbox(key),
                    self.keys.meta(key),
                    self.keys.journal(key.team, key.channel, message.ts),
                    self.keys.pending,
                    self.keys.lock(key),
                    self.keys.forgotten_at(key.team, message.user),
                    *([self.keys.rate_calls(count_call.name)] if count_call else []),
                ],
                [
                    message.to_json(),
                    Keys.DEDUP_TTL,
                    Keys.INBOX_TTL,
                    self.conversation_ttl,
                    int(follow),
                    int(message.starts_conversation and not earlier_lost),
                    str(key),
                    time.time(),
                    message.ts,
                    token,
                    self.lock_ttl_ms,
                    uuid.uuid4().hex if count_call else "",
                    count_call.window_ms if count_call else 0,
                    int(look_first),
                    answer_ts or "",
                    sign or "",
                    written or "",
                ],
            )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        return Accepted(int(accepted[0])), _queued(accepted[1:])

    async def take_thread(
        self, key: ThreadKey, token: str, expected: Sequence[str] = ()
    ) -> Queued | Literal[False] | None:
        """Lock the thread for `token` and return its earliest waiting message (by Slack ts),
        with its journal. `expected`: the ts of the messages likely to be first, whose journals
        the step declares (see `_HEAD_WITH_JOURNAL`); another's is read next.

        False: another worker holds the lock (it will reach the inbox's messages). None: nothing
        is waiting (the lock is released again).
        """
        hinted, journals = self._hints(key, expected)
        found = await self._batch.run_script(
            self._take,
            [self.keys.lock(key), self.keys.inbox(key), self.keys.pending, self.keys.processes, *journals],
            [token, self.lock_ttl_ms, str(key), time.time(), *hinted],
        )
        if found is None:
            return False
        return await self._with_journal(found)

    async def finish(
        self, queued: Queued, token: str, outcome: Progress, expected: Sequence[str] = ()
    ) -> Queued | None:
        """Record a message's outcome and take it off its thread's inbox, in one step; return the
        next one (still under the lock), or None once the inbox is empty (the lock is released).
        `expected`: as for `take_thread`."""
        message = queued.message
        key = message.key
        keys, args = self._journal_step(message, outcome)
        hinted, journals = self._hints(key, expected)
        found = await self._batch.run_script(
            self._finish,
            [self.keys.inbox(key), self.keys.pending, self.keys.lock(key), *journals, *keys],
            [str(key), queued.raw, token, time.time(), len(hinted), *hinted, *args],
        )
        return await self._with_journal(found)

    def _hints(self, key: ThreadKey, expected: Sequence[str]) -> tuple[list[str], list[str]]:
        """The oldest of the messages expected (the inbox is ordered by ts), and their journals."""
        hinted = sorted(expected, key=Decimal)[:EXPECTED_HINTS] if len(expected) > 1 else list(expected)
        return hinted, [self.keys.journal(key.team, key.channel, ts) for ts in hinted]

    async def _with_journal(self, found: Any) -> Queued | None:
        """A message taken with its journal; one that came without (its journal was not declared,
        see `_HEAD_WITH_JOURNAL`) has it read now. Its thread's lock is held, so nobody else
        finishes it meanwhile; an edit or deletion written since is read with it."""
        if found and len(found) == 1:
            message = IncomingMessage.from_json(found[0])
            journal = await self._batch.execute(
                "HGETALL", self.keys.journal(message.team, message.channel, message.ts)
            )
            flat = journal if isinstance(journal, list) else [i for pair in journal.items() for i in pair]
            found = [found[0], flat]
        return _queued(found)

    async def beat(
        self, process: str, liveness_ms: int, waiting: Sequence[tuple[str, str, str]] = ()
    ) -> BreakerNews:
        """Say that `process` is alive for the next `liveness_ms`: the thread locks it holds are
        its own until then, whatever their own lifetime (see `threads_orphaned`). Returns what
        Redis holds of the model's breaker (bot/shared_breaker.py), and which of the messages
        `waiting` (team, channel, ts) have had their turn (`BreakerNews.over`)."""
        keys = [
            self.keys.processes,
            self.keys.llm_breaker,
            self.keys.llm_failures,
            self.keys.llm_closed,
            self.keys.processes_left,
        ]
        journals = [self.keys.journal(*message) for message in waiting]
        left_ms, failures, closed, remembered, peers, over = await self._batch.run_script(
            self._beat, keys + journals, [process, liveness_ms]
        )
        return BreakerNews(
            max(0, int(left_ms)) / 1000,
            int(failures),
            closed or None,
            bool(remembered),
            max(0, int(peers)),
            frozenset(message for message, done in zip(waiting, over, strict=True) if int(done)),
        )

    async def llm_failed(self) -> int:
        """One more turn found the model down: how many have in a row, in all processes."""
        count = self._batch.submit("INCR", self.keys.llm_failures)
        expiry = self._batch.submit("PEXPIRE", self.keys.llm_failures, Keys.LLM_FAILURES_TTL_MS)
        await asyncio.gather(count, expiry)
        return int(count.result())

    async def llm_breaker_opened(self, cooldown_seconds: float) -> None:
        """This process's breaker opened: every process's beat learns it for `cooldown_seconds`
        (and a process asking to probe, at once); a probe's claim ends with it."""
        cooldown_ms = max(1, int(cooldown_seconds * 1000))
        opened = self._batch.submit("SET", self.keys.llm_breaker, "1", "PX", cooldown_ms)
        cleared = self._batch.submit("DEL", self.keys.llm_failures, self.keys.llm_probe)
        await asyncio.gather(opened, cleared)

    async def llm_reached(self, *, breaker_was_open: bool) -> None:
        """A turn reached the model: no failures in a row now, and, after a probe, no breaker and
        no probe's claim, and a new closing token, from which every process's beat learns that
        the model is back (their breakers close too, rather than each wait for a probe of its own)."""
        after_probe = [self.keys.llm_breaker, self.keys.llm_probe] if breaker_was_open else []
        cleared = self._batch.execute("DEL", self.keys.llm_failures, *after_probe)
        if not breaker_was_open:
            await cleared
            return
        closed = self._batch.submit("SET", self.keys.llm_closed, uuid.uuid4().hex, "EX", 3600)
        await asyncio.gather(cleared, closed)

    async def claim_llm_probe(self, token: str, claim_seconds: float) -> tuple[bool, float]:
        """May this process (`token`) send the one probe of all processes after a cooldown? Held
        for `claim_seconds` at most (a process that dies probing). Also the seconds left of a
        breaker another process opened since (0 when none is open)."""
        keys = [self.keys.llm_breaker, self.keys.llm_probe]
        claim_ms = max(1, int(claim_seconds * 1000))
        claimed, left_ms = await self._batch.run_script(self._claim_probe, keys, [token, claim_ms])
        return bool(claimed), max(0, int(left_ms)) / 1000

    async def release_llm_probe(self, token: str) -> None:
        await self._batch.run_script(self._release_probe, [self.keys.llm_probe], [token])

    async def shared_state(self) -> SharedState:
        seconds, micros = await self.redis.time()  # the clock the beats are scored by
        now_ms = seconds * 1000 + micros // 1000
        alive = await self.redis.zcount(self.keys.processes, f"({now_ms}", "+inf")
        waiting = await self.redis.zcard(self.keys.pending)
        breaker_ms = await self.redis.pttl(self.keys.llm_breaker)
        failures = await self.redis.get(self.keys.llm_failures)
        probing = await self.redis.exists(self.keys.llm_probe) > 0
        breaker = BreakerNews(max(0, breaker_ms) / 1000, int(failures or 0))
        return SharedState(alive, waiting, breaker, probing)

    async def leave(self, process: str) -> None:
        """`process` is stopping: locks it still holds may be taken over at once, whatever a beat
        of its sent before this does when it runs after. Batched, as a beat is: a stop that cannot
        wait longer cancels it for sure (redis-py's own write, in Python 3.11's `wait_for`, can
        swallow a cancellation, and the call then ran out its retries, 20 s)."""
        await self._batch.run_script(self._leave, [self.keys.processes, self.keys.processes_left], [process])

    async def threads_orphaned(
        self, idle_seconds: float, limit: int = 1000, *, once_per_seconds: float = 0
    ) -> list[ThreadKey]:
        """Threads with queued messages, unmoved for `idle_seconds`, whose lock is held by a
        process that stopped saying it is alive: `take_thread` takes them over. With
        `once_per_seconds`, an empty list unless no process has looked within that time: one
        look a period serves them all, however many processes share Redis."""
        idle = await self._batch.run_script(
            self._idle_threads,
            [self.keys.pending, self.keys.orphan_scan],
            [time.time() - idle_seconds, limit, int(once_per_seconds * 1000)],
        )
        threads = await self._thread_keys(idle)
        if not threads:
            return []
        locks = [self.keys.lock(key) for key in threads]
        orphaned = await self._batch.run_script(
            self._orphaned_among, [self.keys.processes, *locks], [str(key) for key in threads]
        )
        return [ThreadKey.parse(thread) for thread in orphaned]

    async def threads_waiting(self, idle_seconds: float, limit: int = 1000) -> list[ThreadKey]:
        """Threads with queued messages that nobody has moved for `idle_seconds`: their worker
        died, stopped, or is waiting to retry a delivery. Every process asks for the same oldest
        `limit`: a dead process may have held hundreds (a burst), and with too small a limit the
        rest would each wait for a later round."""
        raw = await self.redis.zrangebyscore(
            self.keys.pending, "-inf", time.time() - idle_seconds, start=0, num=limit
        )
        return await self._thread_keys(raw)

    async def _thread_keys(self, members: list[str]) -> list[ThreadKey]:
        """The threads named by members of `pending`. One that names no thread (written by hand,
        or by something else sharing the key prefix) can never be worked: it is dropped, rather
        than stop every recovery round that meets it."""
        keys: list[ThreadKey] = []
        for member in members:
            try:
                keys.append(ThreadKey.parse(member))
            except ValueError:
                log.warning("malformed entry dropped from the waiting threads entry=%.80r", member)
                await self.redis.zrem(self.keys.pending, member)
        return keys

    # -- the turn journal ------------------------------------------------------------------

    async def record_progress(
        self, message: IncomingMessage, *, turns: tuple[Turn, ...] = (), **fields: str | int | None
    ) -> None:
        """Write where a turn got to (None clears a field), and append to the conversation the
        `turns` that step produced, all in one step: the journal never says a turn was stored
        when it was not, nor the other way round."""
        keys, args = self._journal_step(message, Progress(fields, turns))
        await self._batch.run_script(self._record_progress, keys, args)

    def _journal_step(self, message: IncomingMessage, step: Progress) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of `_JOURNAL_STEP_FUNCTION` for one step of a message's turn."""
        key = message.key
        people = sorted({turn.user for turn in step.turns if turn.role == "user" and turn.user})
        asked = next((turn.ts for turn in step.turns if turn.role == "user"), "")
        answer = next((turn for turn in step.turns if turn.role == "assistant"), None)
        answered = "" if answer is None else " ".join(dict.fromkeys((answer.ts, *answer.messages)))
        updates = [item for name, value in step.fields.items() if value is not None for item in (name, value)]
        cleared = [name for name, value in step.fields.items() if value is None]
        answers = _answers_of(key, step.turns)
        keys = [
            self.keys.journal(message.team, message.channel, message.ts),
            self.keys.turns(key),
            self.keys.meta(key),
            self.keys.answers(key),
            *(self.keys.user_index(key.team, user) for user in people),
        ]
        args = [
            Keys.JOURNAL_TTL,
            self.conversation_ttl,
            int(time.time()),
            len(people),
            len(step.turns),
            len(updates) // 2,
            len(cleared),
            -1 if answers is None else len(answers),
            asked,
            int(message.action == "record"),
            answered,
            *(turn.to_json() for turn in step.turns),
            *(answers or ()),
            *updates,
            *cleared,
        ]
        return keys, args

    async def count_attempt(self, message: IncomingMessage) -> int:
        key = self.keys.journal(message.team, message.channel, message.ts)
        return int(await self.redis.hincrby(key, "attempts", 1))

    # -- an answer's first step --------------------------------------------------------------

    async def begin_answer(
        self,
        message: IncomingMessage,
        question: tuple[Turn, ...],
        limits: list[tuple[str, str, int, int]],
        newest: int,
    ) -> Begun:
        """Count the message against each abuse limit (scope, who, limit, window seconds); unless
        one is exceeded, store the `question` and mark the turn begun, and read what its prompt is
        built from: the summary and the `newest` turns. One round trip."""
        now = int(time.time())
        limit_keys = [
            self.keys.rate(scope, message.team, who, window, now // window)
            for scope, who, _, window in limits
        ]
        limit_args = [item for _, _, limit, window in limits for item in (limit, window)]
        keys, args = self._journal_step(
            message, Progress.of(turns=question, state="working", user_turn_stored=1)
        )
        try:
            found = await self._batch.run_script(
                self._begin_answer, [*limit_keys, *keys], [len(limits), *limit_args, newest, *args]
            )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        if int(found[0]) < 0:
            return Begun(over_limit=0, deleted=True)
        if found[0]:
            return Begun(over_limit=int(found[0]))
        (hydrated, text, upto, epoch), raw, edited = found[1], found[2], found[3]
        return Begun(
            over_limit=0,
            hydrated=hydrated == "1",
            summary=SummaryState(text or None, upto or None, epoch or "0"),
            newest_turns=[Turn.from_json(item) for item in raw],
            edited=edited or None,
        )

    # -- per-thread lock (taken by `take_thread`, handed on by `finish`) --------------------

    async def renew_lock(self, key: ThreadKey, token: str, ts: str) -> LockRenewal:
        """Renew the thread's lock held by `token` for its message at `ts`; see `LockRenewal` for
        what can be found."""
        journal = self.keys.journal(key.team, key.channel, ts)
        found = await self._batch.run_script(
            self._renew_thread_lock, [self.keys.lock(key), journal], [token, self.lock_ttl_ms]
        )
        return LockRenewal(int(found))

    async def release_lock(self, key: ThreadKey, token: str) -> None:
        await self._batch.run_script(self._release_lock, [self.keys.lock(key)], [token])

    # -- one summary job per conversation, across processes ------------------------------------

    async def acquire_summary_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(
            await self.redis.set(self.keys.summary_lock(key), token, nx=True, px=Keys.SUMMARY_LOCK_TTL_MS)
        )

    async def renew_summary_lock(self, key: ThreadKey, token: str) -> bool:
        return bool(
            await self._renew_lock(keys=[self.keys.summary_lock(key)], args=[token, Keys.SUMMARY_LOCK_TTL_MS])
        )

    async def release_summary_lock(self, key: ThreadKey, token: str) -> None:
        await self._release_lock(keys=[self.keys.summary_lock(key)], args=[token])

    # -- conversations ---------------------------------------------------------------------

    async def is_followed(self, key: ThreadKey) -> bool:
        try:
            return await self._batch.execute("HGET", self.keys.meta(key), "followed") == "1"
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    async def is_hydrated(self, key: ThreadKey) -> bool:
        return await self._batch.execute("HGET", self.keys.meta(key), "hydrated") == "1"

    async def append_turns(self, key: ThreadKey, *turns: Turn) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_append(pipe, key, turns)
            await pipe.execute()

    def _queue_append(self, pipe: Any, key: ThreadKey, turns: tuple[Turn, ...]) -> None:
        pipe.rpush(self.keys.turns(key), *(turn.to_json() for turn in turns))
        pipe.expire(self.keys.turns(key), self.conversation_ttl)
        pipe.hset(self.keys.meta(key), "updated", int(time.time()))
        pipe.expire(self.keys.meta(key), self.conversation_ttl)
        self._index_people(pipe, key, turns)
        self._index_answers(pipe, key, turns)

    async def merge_read_back(self, key: ThreadKey, turns: list[Turn], *, copy_of: str | None = None) -> int:
        """Merge a conversation's earlier messages read from Slack (oldest first) into what is
        stored, in Slack's order, leaving out those stored already; mark it read. Returns how
        many joined it (see `_MERGE_READ_BACK`).

        `copy_of`: a DM thread's, which starts with a copy of the DM message at that ts (the
        question its answer was for): the DM's conversation notes where, so that a deletion or
        edit of it reaches the copy (`answers_to`) also when the answer is not stored there.

        A message deleted since it was read is left out, with the answers to it: its deletion,
        which found nothing here to take out, left a tombstone. One edited since it was read joins
        with its newest text, which its edit left (`Keys.edited`) for the same reason, unless the
        page showed a newer edit (`Turn.edited`)."""
        dm = self.keys.meta(ThreadKey(key.team, key.channel, "dm")) if copy_of else self.keys.meta(key)
        people = sorted({turn.user for turn in turns if turn.role == "user" and turn.user})
        return int(
            await self._merge_read_back(
                keys=[
                    self.keys.turns(key),
                    self.keys.meta(key),
                    self.keys.answers(key),
                    dm,
                    *(self.keys.deleted(key.team, key.channel, turn.reply_to or turn.ts) for turn in turns),
                    *(self.keys.edited(key.team, key.channel, turn.ts) for turn in turns),
                    *(self.keys.user_index(key.team, user) for user in people),
                ],
                args=[
                    self.conversation_ttl,
                    int(key.thread == "dm"),  # only a DM's answers are indexed (`_answers_of`)
                    f"copy:{copy_of}" if copy_of else "",
                    key.thread,
                    next((i for i, turn in enumerate(turns, 1) if copy_of and turn.ts == copy_of), 0),
                    *(turn.to_json() for turn in turns),
                ],
            )
        )

    def _index_answers(self, pipe: Any, key: ThreadKey, turns: Iterable[Turn]) -> None:
        """Add a DM's answers among `turns` to its index. Whether the index covered the list before
        is not known in a pipeline, so its stamp goes (`_INDEX_ANSWERS_FUNCTION`): a DM added to
        this way is indexed again by its next look (`answers_to`)."""
        if (answers := _answers_of(key, turns)) is None:
            return
        pipe.zremrangebylex(self.keys.answers(key), "[indexed:", "(indexed;")
        if answers:
            pipe.zadd(self.keys.answers(key), dict.fromkeys(answers, 0))
            pipe.expire(self.keys.answers(key), self.conversation_ttl)

    def _index_people(self, pipe: Any, key: ThreadKey, turns: Iterable[Turn]) -> None:
        for user in {turn.user for turn in turns if turn.role == "user" and turn.user}:
            pipe.sadd(self.keys.user_index(key.team, user), self.keys.turns(key))
            pipe.expire(self.keys.user_index(key.team, user), self.conversation_ttl)

    async def recent_turns(self, key: ThreadKey, limit: int) -> list[Turn]:
        """The newest `limit` turns, oldest first; never reads more of the history than that."""
        raw = await self.redis.lrange(self.keys.turns(key), -limit, -1)
        return [Turn.from_json(item) for item in raw]

    async def tail(self, key: ThreadKey, skip: int, count: int) -> list[Turn]:
        """`count` turns ending `skip` turns before the newest, oldest first (fewer at the start)."""
        raw = await self._batch.execute("LRANGE", self.keys.turns(key), -(skip + count), -(skip + 1))
        return [Turn.from_json(item) for item in raw]

    async def summary(self, key: ThreadKey) -> SummaryState:
        text, upto, epoch = await self.redis.hmget(self.keys.meta(key), "summary", "summary_upto", "epoch")
        return SummaryState(text or None, upto or None, epoch or "0")

    async def summary_and_tail(self, key: ThreadKey, count: int) -> tuple[SummaryState, list[Turn]]:
        """The rolling summary and the newest `count` turns (oldest first), in one round trip."""
        found = self._batch.submit("HMGET", self.keys.meta(key), "summary", "summary_upto", "epoch")
        page = self._batch.submit("LRANGE", self.keys.turns(key), -count, -1)  # the same batch
        (text, upto, epoch), raw = await asyncio.gather(found, page)
        return SummaryState(text or None, upto or None, epoch or "0"), [Turn.from_json(item) for item in raw]

    async def stored_ts(self, key: ThreadKey) -> set[str]:
        return {Turn.from_json(item).ts for item in await self.redis.lrange(self.keys.turns(key), 0, -1)}

    async def save_summary(self, key: ThreadKey, text: str, upto: str, based_on: SummaryState) -> bool:
        """Store a summary of every turn up to `upto`, unless the conversation changed since
        `based_on` was read (reset, a deletion or edit, or another summary saved first)."""
        saved = await self._save_summary(
            keys=[self.keys.meta(key), self.keys.turns(key)],
            args=[text, upto, based_on.upto or "", based_on.epoch, self.conversation_ttl],
        )
        return bool(saved)

    async def reset(self, key: ThreadKey) -> None:
        """Forget a conversation's turns and summary; the bot keeps following the thread."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.turns(key), self.keys.answers(key))
            pipe.hdel(self.keys.meta(key), "summary", "summary_upto")
            pipe.hincrby(self.keys.meta(key), "epoch", 1)
            pipe.hset(self.keys.meta(key), "updated", int(time.time()))
            pipe.expire(self.keys.meta(key), self.conversation_ttl)
            await pipe.execute()

    async def remove_user_message(self, key: ThreadKey, ts: str) -> bool:
        """Delete a person's message and the bot's answer to it, and the summary if it covers
        them; a message still waiting for its turn is marked deleted, and not answered."""
        return bool(
            await self._rewrite_turn(
                keys=self._rewrite_keys(key, ts),
                args=[ts, "", "delete", self.conversation_ttl, "", Keys.DELETED_TTL, "", "", 0],
            )
        )

    async def edit_user_message(
        self, key: ThreadKey, ts: str, text: str, slack_text: str, *, user: str = "", edited_ts: str = ""
    ) -> bool:
        """Replace a person's message `text` (as stored), and drop the summary if it covers the
        old text; a message still waiting for its turn is answered as edited (`slack_text`).
        With its author (`user`), the edit also leaves a record of `text` for a read-back that saw
        the message before it (`Keys.edited`). `edited_ts`: the edit's own ts, by which an older
        edit, come after it, changes nothing (see `_REWRITE_TURN`)."""
        record = json.dumps({"ts": edited_ts, "text": text, "user": user}, ensure_ascii=False) if user else ""
        index = [self.keys.user_index(key.team, user)] if user else []
        kept = min(Keys.EDITED_TTL, self.conversation_ttl)  # also within its author's index's
        args = [ts, text, "edit", self.conversation_ttl, slack_text, kept, edited_ts, record]
        args.append(int(key.thread == "dm"))
        return bool(await self._rewrite_turn(keys=[*self._rewrite_keys(key, ts), *index], args=args))

    async def answers_to(self, key: ThreadKey, ts: str, *, deleting: bool = False) -> list[str]:
        """The ts of the bot's stored answers to the person's message at `ts` in a DM, for an edit
        or deletion: from the DM's answers index (a scan, once, of a DM stored without one); and of
        a DM thread that copied it. `deleting`: its tombstone is left in the same step (see
        `_ANSWERS_TO`)."""
        keys = [self.keys.turns(key), self.keys.answers(key), self.keys.meta(key)]
        tombstone = [self.keys.deleted(key.team, key.channel, ts)] if deleting else []
        found = await self._answers_to(
            keys=[*keys, *tombstone], args=[ts, *([Keys.DELETED_TTL] if deleting else [])]
        )
        return list(dict.fromkeys(found))

    def _rewrite_keys(self, key: ThreadKey, ts: str) -> list[str]:
        team, channel = key.team, key.channel
        journal, deleted = self.keys.journal(team, channel, ts), self.keys.deleted(team, channel, ts)
        edited = self.keys.edited(team, channel, ts)
        return [self.keys.turns(key), self.keys.meta(key), journal, self.keys.answers(key), deleted, edited]

    # -- the right to be forgotten ---------------------------------------------------------

    async def index_personal_record(self, team: str, user: str, record_key: str, ttl_seconds: int) -> None:
        """Register a key that holds one person's data (e.g. their feedback), so that forgetting
        them deletes it. `ttl_seconds` should be the record's own TTL."""
        index = self.keys.user_index(team, user)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(index, record_key)
            pipe.expire(index, max(ttl_seconds, self.conversation_ttl))
            await pipe.execute()

    async def forget_user(
        self, team: str, user: str, *, before: str | None = None, scan_conversations: bool = False
    ) -> Forgotten:
        """Delete everything stored about a person in a workspace: their messages in every
        conversation (and the bot's answers to them), summaries that may quote them, the text in
        the journals of those messages once finished, their personal records, their cached name
        and their index; and see that their messages sent before `before` (their `forget me`'s
        ts; None: now) and still waiting for their turn, or accepted only after this (a Slack
        retry, within a day), are answered without being stored. With
        `scan_conversations`, every conversation of the workspace is searched too, not only those
        their index names."""
        # First the mark, which a message of theirs sent before it and accepted from now on heeds
        # (`_ACCEPT`): the look at the waiting messages next cannot see those.
        mark = before or f"{time.time():.6f}"
        await self._mark_forgotten(keys=[self.keys.forgotten_at(team, user)], args=[mark, Keys.DEDUP_TTL])
        # Then: a waiting message whose turn begins meanwhile is in the index read next.
        await self._forget_waiting_messages(team, user, before)
        index = self.keys.user_index(team, user)
        indexed: set[str] = set(await self.redis.smembers(index))
        members = set(indexed)
        if scan_conversations:
            pattern = self.keys.turns(ThreadKey(team, "*", "*"))
            members |= {name async for name in self.redis.scan_iter(match=pattern, count=1000)}
        messages = conversations = records = 0
        for member in sorted(members):
            if self.keys.is_edit_record(member):  # theirs (`_REWRITE_TURN`); no feedback record
                await self.redis.delete(member)
                continue
            thread = self.keys.thread_of_turns(member)
            if thread is None:  # a record registered as holding their data: theirs, or shared
                records += await self._forget_in_record(member, user)
                continue
            removed = await self._forget_in_conversation_of(thread, member, user)
            if removed:
                messages += removed
                conversations += 1
        for pattern in self.keys.personal_record_patterns_of(team):
            async for name in self.redis.scan_iter(match=pattern, count=1000):
                records += await self._forget_in_record(name, user)
        await self._drop_person_index(team, user, indexed, mark)
        return Forgotten(messages=messages, conversations=conversations, records=records)

    async def _drop_person_index(self, team: str, user: str, indexed: set[str], mark: str) -> None:
        """Take what `forget_user` went through (`indexed`: their index as it read it) out of the
        person's index, with the edit records added to it since, and their cached name. An edit
        of theirs whose step ran before the step that took its message out kept a record, there;
        one after it keeps none (its journal's mark: `_FORGET_IN_CONVERSATION`), so this read
        finds every record left; but that of an edit of a message sent after `mark` (their
        `forget me`), which stays, as the message does. A conversation they wrote in again
        meanwhile (a message sent after `forget me`) stays in it, as does anything else added
        meanwhile, for their next `forget me`, rather than be left where none would find it
        (`_DROP_INDEX`)."""
        index = self.keys.user_index(team, user)
        late = [member for member in await self.redis.smembers(index) if member not in indexed]
        edits = [
            member
            for member in late
            if self.keys.is_edit_record(member) and _sent_before(member.rsplit(":", 1)[-1], mark)
        ]
        conversations = sorted(member for member in indexed if self.keys.thread_of_turns(member))
        others = sorted(indexed.difference(conversations))
        keys = [index, self.keys.display_name(team, user), *conversations, *edits]
        await self._drop_index(keys=keys, args=[user, len(conversations), *others])

    async def _forget_waiting_messages(self, team: str, user: str, before: str | None) -> None:
        """Mark the person's messages waiting in the workspace's inboxes, sent before `before`, so
        that their turns store nothing (see `_FORGET_WAITING`)."""
        journals = [
            self.keys.journal(key.team, key.channel, ts)
            for key, ts in await self._waiting_messages_of(user, team)
            if before is None or _sent_before(ts, before)
        ]
        if journals:
            await self._forget_waiting(keys=journals)

    async def _waiting_messages_of(self, user: str, team: str | None = None) -> list[tuple[ThreadKey, str]]:
        """The thread and ts of each of the person's messages waiting in an inbox (of one
        workspace, or all). The waiting threads are few (those whose messages queue behind an
        answer in flight): one read of them, one of their inboxes. A key named as an inbox that
        is no sorted set (left by something else sharing the key prefix) holds no message: passed
        over, rather than stop `forget` for everyone, in every workspace, while it is there."""
        waiting_threads = await self._thread_keys(await self.redis.zrange(self.keys.pending, 0, -1))
        threads = [key for key in waiting_threads if team is None or key.team == team]
        if not threads:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in threads:
                pipe.zrange(self.keys.inbox(key), 0, -1)
            inboxes = await pipe.execute(raise_on_error=False)
        found = []
        for key, waiting in zip(threads, inboxes, strict=True):
            if isinstance(waiting, ResponseError):
                if "WRONGTYPE" not in str(waiting):
                    raise waiting
                log.warning("waiting thread's inbox is no sorted set, passed over thread=%s", key)
                continue
            for raw in waiting:
                entry = _inbox_entry(raw)
                ts = entry.get("ts")
                if entry.get("user") == user and isinstance(ts, str):
                    found.append((key, ts))
        return found

    async def _forget_in_conversation_of(self, thread: ThreadKey, turns: str, user: str) -> int:
        """Take a person's turns out of one conversation (see `_FORGET_IN_CONVERSATION`): their
        turns' ts first, so that the step that removes them declares each journal it touches."""
        for _ in range(FORGET_ATTEMPTS):
            theirs = await self._their_turns(keys=[turns], args=[user])
            if not theirs:
                return 0
            journals = [self.keys.journal(thread.team, thread.channel, ts) for ts in theirs]
            dm = self.keys.meta(ThreadKey(thread.team, thread.channel, "dm"))  # notes its copies
            removed = int(
                await self._forget_in_conversation(
                    keys=[turns, self.keys.meta(thread), self.keys.answers(thread), dm, *journals],
                    args=[user, self.conversation_ttl, *theirs],
                )
            )
            if removed >= 0:
                return removed
        # They kept writing there faster than two round trips. Giving up quietly would leave all
        # they said there, before `forget me` too, and tell them they were forgotten: they are told
        # it could not all go instead, and their index stays, so that asking again finds it. The
        # caller logs it, once, with who asked.
        raise ForgetIncomplete(str(thread))

    async def _forget_in_record(self, name: str, user: str) -> int:
        """Delete a record that is the person's, or the entries in it that name them (a hash's
        fields whose name or value carries the user id: one person's vote among a conversation's,
        say), leaving everyone else's. Returns how many records or entries went."""
        if user in name.split(":"):
            return int(await self.redis.delete(name))
        kind = await self.redis.type(name)
        names = re.compile(rf"(?<![A-Za-z0-9]){re.escape(user)}(?![A-Za-z0-9])").search
        if kind == "string":
            value = await self.redis.get(name)
            return int(await self.redis.delete(name)) if value and names(value) else 0
        if kind == "hash":
            record = await self.redis.hgetall(name)
            theirs = [field for field, value in record.items() if names(field) or names(value)]
            return int(await self.redis.hdel(name, *theirs)) if theirs else 0
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
        return await self._batch.execute("GET", self.keys.display_name(team, user))

    async def cache_name(self, team: str, user: str, name: str) -> None:
        await self._batch.execute("SET", self.keys.display_name(team, user), name, "EX", Keys.NAME_TTL)

    # -- feedback ----------------------------------------------------------------------------

    async def record_feedback(self, vote: FeedbackVote) -> None:
        """Keep a vote beside the conversation it rates; a person's later click replaces it."""
        key = ThreadKey(vote.team, vote.channel, vote.thread)
        index = self.keys.user_index(vote.team, vote.user)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.feedback(key), f"{vote.answer_ts}:{vote.user}", vote.to_json())
                pipe.expire(self.keys.feedback(key), self.conversation_ttl)
                # In the voter's index, so that forgetting someone who only voted finds it.
                pipe.sadd(index, self.keys.feedback(key))
                pipe.expire(index, self.conversation_ttl)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    async def feedback_votes(self, key: ThreadKey) -> list[FeedbackVote]:
        raw = await self.redis.hgetall(self.keys.feedback(key))
        return [FeedbackVote(**json.loads(value)) for value in raw.values()]

    # -- the shared Slack rate budget --------------------------------------------------------

    async def claim_rate(
        self, claims: list[RateClaim], *, writer: str = "", writer_ttl_ms: int = 0, fence: Fence | None = None
    ) -> RateGrant:
        """Take slots from rate buckets, all or none (see `_RATE_CLAIM`); `writer` marks an
        answer in flight on the first bucket, so that each can be given its fair share. With a
        `fence`, only while its token holds the thread's lock (in the same step, so a post that
        checks it costs no extra round trip), else LockLost."""
        keys = [
            k
            for c in claims
            for k in (
                self.keys.rate_calls(c.bucket.name),
                self.keys.rate_held(c.bucket.name),
                self.keys.rate_pause(c.bucket.name),
            )
        ]
        keys.append(self.keys.rate_active(claims[0].bucket.name))
        spec = [
            {"limit": c.bucket.limit, "window": c.bucket.window_ms, "headroom": c.headroom,
             "mode": c.mode, "member": c.member, "hold": c.hold_ms}
            for c in claims
        ]  # fmt: skip
        args: list[str | int] = [json.dumps(spec), writer, max(writer_ttl_ms, 1)]
        if fence is not None:
            journal = self.keys.journal(fence.key.team, fence.key.channel, fence.ts)
            keys += [self.keys.lock(fence.key), journal]
            args += [fence.token, self.lock_ttl_ms]
        granted, wait_ms, active, *refused = await self._batch.run_script(self._rate_claim, keys, args)
        if int(granted) < 0:
            raise LockLost(str(fence.key if fence else ""))
        waits = tuple(int(w) / 1000 for w in refused[0]) if refused else ()
        return RateGrant(bool(granted), int(wait_ms) / 1000, int(active), waits)

    async def release_rate_hold(self, bucket: RateBucket, member: str) -> None:
        """Give back a slot held for a call that will not be made."""
        await self._batch.execute("ZREM", self.keys.rate_held(bucket.name), member)

    async def pause_rate(self, bucket: RateBucket, seconds: float) -> None:
        """Slack said 429: no process calls this bucket until its Retry-After has passed."""
        key = self.keys.rate_pause(bucket.name)
        milliseconds = max(1, int(seconds * 1000))
        if await self.redis.pttl(key) < milliseconds:
            await self.redis.set(key, "1", px=milliseconds)

    async def leave_rate(self, buckets: Iterable[RateBucket], writer: str) -> None:
        """An answer stops writing: it no longer takes a share of these buckets."""
        await asyncio.gather(
            *(self._batch.submit("ZREM", self.keys.rate_active(b.name), writer) for b in buckets)
        )

    # -- for the admin command line -------------------------------------------------------

    async def conversation_keys(self, team: str | None = None) -> list[ThreadKey]:
        """Every stored conversation (of one workspace, or all), in key order."""
        found: set[ThreadKey] = set()
        async for name in self.redis.scan_iter(match=self.keys.conversations(team or "*"), count=1000):
            if (thread := self.keys.thread_of(name)) is not None:
                found.add(thread)
        return sorted(found, key=str)

    async def conversations_in(self, channel: str, thread: str) -> list[ThreadKey]:
        """The stored conversations of a channel's thread, in whichever workspace."""
        pattern = self.keys.conversations("*", channel, thread)
        found = {self.keys.thread_of(name) async for name in self.redis.scan_iter(match=pattern, count=1000)}
        return sorted((key for key in found if key is not None), key=str)

    async def stored_conversation(self, key: ThreadKey) -> StoredConversation | None:
        """One conversation as stored, all of it; None when nothing is stored."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.meta(key))
            pipe.lrange(self.keys.turns(key), 0, -1)
            pipe.ttl(self.keys.turns(key))
            pipe.ttl(self.keys.meta(key))
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
            pipe.llen(self.keys.turns(key))
            pipe.delete(self.keys.turns(key), self.keys.meta(key), self.keys.answers(key))
            turns, _ = await pipe.execute()
        return int(turns)

    async def teams_knowing(self, user: str) -> list[str]:
        """The workspaces whose per-person index names `user`, that cache their display name (the
        only trace of someone the bot looked up, as a mention, and never stored a message of), or
        where a message of theirs waits for its turn (someone whose first message it is)."""
        # One pass over the keyspace for both kinds of key, as before for the index alone.
        found = set()
        async for name in self.redis.scan_iter(match=self.keys.named_after(user), count=1000):
            if (team := self.keys.team_of_person_key(name, user)) is not None:
                found.add(team)
        found |= {key.team for key, _ in await self._waiting_messages_of(user)}
        return sorted(found)

    async def count_keys(self, pattern: str) -> int:
        return len([name async for name in self.redis.scan_iter(match=pattern, count=1000)])
