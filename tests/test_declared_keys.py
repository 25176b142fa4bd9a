"""Every key a Lua script of the bot touches is one it declares in KEYS, as Redis asks of scripts: a
Redis Cluster routes a script by them, and some servers and proxies refuse a script that builds
key names of its own. Redis's MONITOR shows each command a script runs, so a real conversation's
scripts are checked command by command."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bot.store import Accepted, IncomingMessage, Progress, Store, ThreadKey, Turn
from tests.conftest import StartBot, wait_until
from tests.emulators.slack import SlackEmulator

DM = "D700"
CHANNEL = "C700"
BOT = "UBOT"
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@asynccontextmanager
async def monitored(redis_url: str) -> AsyncIterator[list[str]]:
    """The lines Redis's MONITOR shows while the block runs."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    connection = client.connection_pool.make_connection()
    await connection.connect()
    await connection.send_command("MONITOR")
    assert await connection.read_response() == "OK"
    lines: list[str] = []

    async def read() -> None:
        while True:
            lines.append(await connection.read_response())

    reader = asyncio.create_task(read())
    try:
        yield lines
        # MONITOR shows commands in the order Redis ran them: once a marker sent now shows, so
        # has every command before it.
        marker = f"end of the monitored block {uuid.uuid4().hex}"
        await client.echo(marker)
        await wait_until(lambda: any(marker in line for line in lines), "the last lines")
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await connection.disconnect()
        await client.aclose()


def _args(line: str) -> tuple[bool, list[str]]:
    """Whether a MONITOR line is a command run by a script, and its arguments."""
    _, _, rest = line.partition(" [")
    source, _, command = rest.partition("] ")
    return source.endswith(" lua"), [
        arg.replace('\\"', '"').replace("\\\\", "\\") for arg in _ARG.findall(command)
    ]


async def undeclared_keys(redis_url: str, lines: list[str]) -> list[str]:
    """Each command a script ran on a key it did not declare, with the script's first key."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    found: list[str] = []
    declared: set[str] | None = None
    sha = ""
    scripts = 0
    try:
        for line in lines:
            in_script, args = _args(line)
            if not in_script:
                name = args[0].upper() if args else ""
                declared = set(args[3 : 3 + int(args[2])]) if name in ("EVAL", "EVALSHA") else None
                sha = args[1] if name == "EVALSHA" else ""
                scripts += declared is not None
                continue
            assert declared is not None, line
            try:
                keys = await client.execute_command("COMMAND GETKEYS", *args)
            except ResponseError:  # no key in it (TIME)
                continue
            for key in keys:
                if key not in declared:
                    found.append(f"{args[0]} {key} (script {sha[:8]}, keys {sorted(declared)[:3]})")
    finally:
        await client.aclose()
    assert scripts > 20  # the scripts were seen at all
    return found


async def test_every_key_a_script_touches_is_one_it_declares(
    start_bot: StartBot, slack: SlackEmulator, redis_url: str
) -> None:
    running = await start_bot("http")
    store: Store = running.bot.store
    async with monitored(redis_url) as lines:
        # A DM: a question, a reply under its answer, an edit and a deletion of the question.
        asked = await slack.post_user_message(DM, "my card ends 4242")
        [answer] = await slack.wait_for_bot_messages(DM, count=1)
        await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
        await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
        second = await slack.post_user_message(DM, "and my invoice")
        await slack.wait_for_bot_messages(DM, count=2)
        await running.settle()
        await slack.edit_message(DM, asked, "my card ends ****")
        await slack.delete_message(DM, second)
        # A thread in a channel, two messages at once (the second waits for the first), a reset.
        root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the deploy is stuck")
        await asyncio.gather(
            slack.post_user_message(CHANNEL, "it says waiting for lock", thread_ts=root),
            slack.post_user_message(CHANNEL, "still stuck", thread_ts=root),
        )
        await slack.wait_for_bot_messages(CHANNEL, root, count=3)
        await slack.post_user_message(CHANNEL, f"<@{BOT}> reset", thread_ts=root)
        await running.settle()
        # A DM stored before the answers index: scanned, and indexed.
        legacy = ThreadKey("T1", "D701", "dm")
        old = [Turn("user", "q", "1.1", "U1"), Turn("assistant", "a", "1.2", reply_to="1.1")]
        await store.redis.rpush(store.keys.turns(legacy), *(turn.to_json() for turn in old))
        assert await store.answers_to(legacy, "1.1") == ["1.2"]
        # A waiting thread whose lock holder's process is gone, found by the orphan scan.
        waiting = IncomingMessage("T1", "C701", "2.1", "U1", "hi", "answer", "2.1", "2.1", BOT)
        await store.accept(waiting, "dead0:token")
        await store.leave("dead0")
        assert await store.threads_orphaned(0) == [waiting.key]
        # Taken over by a take that expects no message: its journal is read after the step.
        taken = await store.take_thread(waiting.key, "beef:token")
        assert taken and (taken.message.ts, taken.record.state) == ("2.1", "queued")
        assert await store.finish(taken, "beef:token", Progress.of(state="noted")) is None
        # A DM thread read back from Slack after a loss: the tombstone of a question deleted
        # meanwhile and the record of one edited meanwhile (read by one MGET), the note of the
        # copy of the question its answer was for (in the DM's meta), then answers read back into
        # the DM (its answers index, begun by them, stamped).
        lost, under = ThreadKey("T1", "D704", "dm"), ThreadKey("T1", "D704", "5.2")
        assert await store.answers_to(lost, "5.0", deleting=True) == []
        await store.edit_user_message(lost, "5.1", "q, edited", "q, edited", user="U1", edited_ts="5.9")
        read = [
            Turn("user", "gone", "5.0", "U1"),
            Turn("user", "q", "5.1", "U1"),
            Turn("assistant", "a", "5.2", reply_to="5.1"),
            Turn("user", "more", "5.3", "U1"),
        ]
        assert await store.merge_read_back(under, read, copy_of="5.1") == 3
        assert await store.merge_read_back(lost, read) == 3
        assert [turn.text for turn in await store.recent_turns(under, 10)] == ["q, edited", "a", "more"]
        assert await store.answers_to(lost, "5.1") == ["5.2"]  # by the note and by the index
        # The answer read back, stored by its own turn after: the copy gives way, in its place.
        answered = IncomingMessage("T1", "D704", "5.1", "U1", "q", "answer", None, "dm", BOT, True)
        whole = Turn("assistant", "a, whole", "5.2", reply_to="5.1")
        await store.record_progress(answered, turns=(whole,), state="answered")
        assert [turn.text for turn in await store.recent_turns(lost, 3)] == ["q, edited", "a, whole", "more"]
        # A message of the person's waiting for its turn, its thread's lock held by a live process.
        held = IncomingMessage("T1", "C702", "3.1", "U1", "hi", "answer", "3.1", "3.1", BOT)
        await store.redis.zadd(store.keys.processes, {"cafe": (time.time() + 600) * 1000})
        assert (await store.accept(held, "cafe:token"))[0] is Accepted.TAKEN
        # Forget me, in the DM: every conversation of the person, their journals included, the
        # note of a copy in another DM, and the journal of their message still waiting.
        await slack.post_user_message(DM, "forget me")
        await slack.wait_for_bot_messages(DM, count=3)
        await running.settle()
    assert await undeclared_keys(redis_url, lines) == []
    assert await store.redis.hget(store.keys.meta(ThreadKey("T1", "D704", "dm")), "copy:5.1") is None
    assert await store.redis.hget(store.keys.journal("T1", "C702", "3.1"), "forgotten") == "1"
    # Each take of a message accepted here declared its journal: read after the step (a round
    # trip more) only for the message taken over from the dead process.
    journals_read_alone = [
        args for in_script, args in map(_args, lines) if not in_script and args[0] == "HGETALL"
    ]
    assert journals_read_alone == [["HGETALL", store.keys.journal("T1", "C701", "2.1")]]


async def test_forget_me_changes_nothing_in_a_step_not_given_every_journal_it_would_touch(
    redis_url: str,
) -> None:
    """`forget me` reads the person's turns, then removes them in a step that declares their
    journals: a turn of theirs stored in between has a journal that step was not given, so it
    changes nothing and says so (-1), and is run again with the turns read anew."""
    store = Store(redis_url, conversation_ttl_days=1)

    def declared(dm: ThreadKey, *ts: str) -> list[str]:
        """Turns, meta, answers index, the DM's meta (its copies' notes), then the journals of `ts`."""
        keys = [store.keys.turns(dm), store.keys.meta(dm), store.keys.answers(dm), store.keys.meta(dm)]
        return [*keys, *(store.keys.journal(dm.team, dm.channel, one) for one in ts)]

    try:
        for channel in ("D702", "D703"):
            for ts in ("1.1", "1.2"):
                asked = IncomingMessage("T1", channel, ts, "U1", "q", "answer", None, "dm", BOT, True)
                await store.record_progress(asked, turns=(Turn("user", "q", ts, "U1"),), state="answered")
        dm, other = ThreadKey("T1", "D702", "dm"), ThreadKey("T1", "D703", "dm")
        # Given every journal it touches, in their place, it goes ahead.
        assert (
            await store._forget_in_conversation(
                keys=declared(other, "1.1", "1.2"), args=["U1", 60, "1.1", "1.2"]
            )
            == 2
        )
        # As if "1.2" were stored after the person's turns were read.
        assert await store._forget_in_conversation(keys=declared(dm, "1.1"), args=["U1", 60, "1.1"]) == -1
        assert len(await store.recent_turns(dm, 10)) == 2
        assert (await store.forget_user("T1", "U1")).messages == 2
        assert await store.recent_turns(dm, 10) == []
    finally:
        await store.close()
