"""The admin command line, run as a real process: each command does its job, and refuses bad
arguments with a clear message and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.store import FeedbackVote, Keys, Store, ThreadKey, Turn
from tests.conftest import StartBot, wait_until
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.test_forget import ANN_SAYS, BOT, CHANNEL, everything_in

KEYS = Keys()  # the names on one Redis (no prefix)

ROOT = Path(__file__).resolve().parents[1]
OLD = ThreadKey("T1", "C1", "1600000000.000100")
NEW = ThreadKey("T1", "C1", "1700000000.000100")
DM = ThreadKey("T1", "D1", "dm")


def admin(redis_url: str | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
async def stored(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[Store]:
    """Three conversations: an old thread and a new one with ann (U1) and bob (U2), and a DM."""
    store = Store(redis_url, conversation_ttl_days=30)
    await store.append_turns(
        OLD,
        Turn(role="user", text="old question about E1234", ts=OLD.thread, user="U1", name="ann"),
        Turn(role="assistant", text="old answer", ts="1600000000.000200", reply_to=OLD.thread),
    )
    await redis.hset(KEYS.meta(OLD), "updated", 1600000000)
    await store.append_turns(
        NEW,
        Turn(role="user", text="check api-prod is red", ts=NEW.thread, user="U1", name="ann"),
        Turn(role="assistant", text="Restart the agent.", ts="1700000000.000200", reply_to=NEW.thread),
        Turn(role="user", text="same here", ts="1700000000.000300", user="U2", name="bob"),
    )
    await store.save_summary(NEW, "- ann: api-prod red", NEW.thread, await store.summary(NEW))
    await store.append_turns(
        DM, Turn(role="user", text="billing question", ts="1700000001.000100", user="U2")
    )
    # Votes on the new thread's answer, as the buttons keep them: ann's, bob's, and cem's (U9),
    # who only voted.
    for user in ("U1", "U2", "U9"):
        vote = FeedbackVote(
            "T1", "C1", NEW.thread, "1700000000.000200", "1700000000.000200", user, "good", 1.0
        )
        await store.record_feedback(vote)
    yield store
    await store.close()


async def test_stats(stored: Store, redis_url: str, tmp_path: Path) -> None:
    result = admin(redis_url, "stats", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = dict(line.rsplit(None, 1) for line in result.stdout.splitlines())
    assert table["conversations"] == "3"
    assert table["turns"] == "6"
    assert int(table["tokens (o200k_base)"]) > 10
    assert table["summaries"] == "1"
    assert table["people indexed"] == "3"  # ann and bob, and cem, who only voted
    assert table["records feedback:*"] == "1"
    assert table["bot processes alive"] == "0"
    assert table["model breaker open, seconds left"] == "0"
    assert table["model probe under way"] == "no"

    # What the bot's processes share: two beating, one gone, one stopped (it stays in the set, as
    # alive until it stopped); a breaker one of them opened.
    await stored.beat("p1", 60_000)
    await stored.beat("p2", 60_000)
    await stored.beat("gone", 1)
    await stored.beat("left", 60_000)
    await stored.leave("left")
    await stored.llm_failed()
    opened = time.monotonic()
    await stored.llm_breaker_opened(30)
    await stored.llm_failed()
    await asyncio.sleep(0.01)
    table = dict(line.rsplit(None, 1) for line in admin(redis_url, "stats", cwd=tmp_path).stdout.splitlines())
    taken = int(time.monotonic() - opened)  # the admin tool's start: seconds on a loaded machine
    assert table["bot processes alive"] == "2"
    assert 28 - taken <= int(table["model breaker open, seconds left"]) <= 30
    assert table["model turns failed in a row"] == "1"
    assert table["model probe under way"] == "no"
    # The cooldown is over and one process tries the model.
    await stored.redis.delete(stored.keys.llm_breaker)
    assert await stored.claim_llm_probe("p1", 30) == (True, 0)
    table = dict(line.rsplit(None, 1) for line in admin(redis_url, "stats", cwd=tmp_path).stdout.splitlines())
    assert table["model probe under way"] == "yes"

    bad = admin(redis_url, "stats", "--verbose", cwd=tmp_path)
    assert bad.returncode == 2 and "unrecognized arguments: --verbose" in bad.stderr


async def test_show_by_key_and_by_slack_link(stored: Store, redis_url: str, tmp_path: Path) -> None:
    result = admin(redis_url, "show", str(NEW), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["thread"] == str(NEW)
    assert [t["text"] for t in shown["turns"]] == ["check api-prod is red", "Restart the agent.", "same here"]
    assert shown["turns"][0]["name"] == "ann" and shown["meta"]["summary"] == "- ann: api-prod red"
    assert 29 * 86400 < shown["expires_in_seconds"] <= 30 * 86400

    link = "https://acme.slack.com/archives/C1/p1700000000000300?thread_ts=1700000000.000100&cid=C1"
    by_link = admin(redis_url, "show", link, cwd=tmp_path)
    assert by_link.returncode == 0, by_link.stderr
    assert json.loads(by_link.stdout)["thread"] == str(NEW)

    bad = admin(redis_url, "show", "C1/1700000000.000100", cwd=tmp_path)
    assert bad.returncode == 2 and "is not TEAM:CHANNEL:THREAD_TS" in bad.stderr
    missing = admin(redis_url, "show", "T1:C1:1700000099.000100", cwd=tmp_path)
    assert missing.returncode == 1 and "no stored conversation T1:C1:1700000099.000100" in missing.stderr


async def test_export_writes_one_json_line_per_conversation(
    stored: Store, redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    result = admin(redis_url, "export", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["thread"] for r in records) == sorted(map(str, (OLD, NEW, DM)))
    assert sum(len(r["turns"]) for r in records) == 6
    # Each turn as it is stored: nothing a turn only carries in flight (an answer's `messages`).
    kept = {
        name
        for key in (OLD, NEW, DM)
        for raw in await redis.lrange(KEYS.turns(key), 0, -1)
        for name in json.loads(raw)
    }
    assert {name for r in records for turn in r["turns"] for name in turn} <= kept

    bad = admin(redis_url, "export", "--team", cwd=tmp_path)
    assert bad.returncode == 2 and "expected one argument" in bad.stderr


async def test_output_piped_to_a_reader_that_stops_early_is_no_redis_error(
    stored: Store, redis_url: str, tmp_path: Path
) -> None:
    """`python -m bot export | head -1`: head goes away, and the bot said Redis did not answer."""
    assert _export_to_a_reader_gone(redis_url, tmp_path) == (0, "")


def _export_to_a_reader_gone(redis_url: str, cwd: Path) -> tuple[int, str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "export"], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line
    return process.wait(timeout=60), process.stderr.read()


async def test_forget_a_user(stored: Store, redis_url: str, redis: aioredis.Redis, tmp_path: Path) -> None:
    result = admin(redis_url, "forget", "U1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "forgot U1 in T1: 4 messages" in result.stdout and "from 2 conversations, 1 records" in result.stdout
    )
    for key, content in (await everything_in(redis)).items():
        assert "U1" not in key and "U1" not in content and "api-prod" not in content, key
    assert [t.text for t in await stored.recent_turns(NEW, 10)] == ["same here"]
    assert sorted(vote.user for vote in await stored.feedback_votes(NEW)) == ["U2", "U9"]

    bad = admin(redis_url, "forget", "ann", cwd=tmp_path)
    assert bad.returncode == 2 and "USER 'ann' is not a Slack user id" in bad.stderr


async def test_a_waiting_thread_whose_inbox_is_no_sorted_set_does_not_stop_forget(
    stored: Store, redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Something else sharing the key prefix wrote a key named as a waiting thread's inbox, in
    another workspace, that is no sorted set: forgetting ann with no `--team` still finds her
    workspace and forgets her there, rather than stop on it for everyone until it is gone. Before,
    the command said Redis did not answer, and forgot nothing."""
    elsewhere = ThreadKey("T2", "C9", "1700000000.000500")
    await redis.set(KEYS.inbox(elsewhere), "not a sorted set")
    await redis.zadd(KEYS.pending, {str(elsewhere): 1})
    result = admin(redis_url, "forget", "U1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "forgot U1 in T1: 4 messages" in result.stdout, result.stdout
    assert [t.text for t in await stored.recent_turns(NEW, 10)] == ["same here"]
    assert await redis.get(KEYS.inbox(elsewhere)) == "not a sorted set"  # not ours to remove


async def test_forget_a_user_who_only_voted(stored: Store, redis_url: str, tmp_path: Path) -> None:
    result = admin(redis_url, "forget", "U9", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "forgot U9 in T1: 0 messages" in result.stdout and "1 records" in result.stdout
    assert sorted(vote.user for vote in await stored.feedback_votes(NEW)) == ["U1", "U2"]


async def test_forget_with_no_team_finds_a_person_whose_only_trace_is_a_waiting_message(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """ann's first message, a follow-up in bob's thread, waits behind his answer when an admin
    forgets her with no `--team`: nothing is stored about her yet (no conversation, no index), but
    the waiting message's workspace knows her. It is answered and stored nowhere; before, the
    command said there was nothing about her, and her message was stored once answered."""
    bot = await start_bot("socket")
    bobs_answer = slack.gate("chat.postMessage", channel=CHANNEL)  # the thread is busy meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the printer is offline", user="U2")
    await llm.wait_for_requests(1)
    follow_up = await slack.post_user_message(CHANNEL, ANN_SAYS[0], thread_ts=root)
    journal = KEYS.journal("T1", CHANNEL, follow_up)
    await wait_until(lambda: redis.exists(journal), "her follow-up accepted")
    assert not await redis.exists(KEYS.user_index("T1", "U1"))

    result = await asyncio.to_thread(admin, redis_url, "forget", "U1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "forgot U1 in T1: 0 messages" in result.stdout, result.stdout
    assert await redis.hget(journal, "state") == "queued"  # waits still: bob's answer is held
    bobs_answer.opened.set()
    answers = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    assert answers[-1]["text"] == f"Answer: ann: {ANN_SAYS[0]}"
    assert await redis.hget(journal, "state") == "answered"
    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)
    assert [turn.user for turn in stored if turn.role == "user"] == ["U2"]


async def test_forget_with_no_team_finds_a_person_whose_only_trace_is_a_cached_name(
    stored: Store, redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """dan (U7) never wrote to the bot, but it looked his name up in two workspaces (someone
    mentioned him there), and cached it: forgetting him with no `--team` finds both and deletes
    the name in each, and says so; bob's cached name stays. Before, the command said nothing was
    stored about dan, and his name stayed cached; then it said "0 messages ... 0 records" and no
    word of the name it deleted."""
    for team in ("T1", "T2"):
        await stored.cache_name(team, "U7", "dan")
    await stored.cache_name("T1", "U2", "bob")
    result = admin(redis_url, "forget", "U7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for team in ("T1", "T2"):
        line = f"forgot U7 in {team}: 0 messages (theirs and the answers to them) from 0 conversations"
        assert f"{line}, 0 records, and their cached name\n" in result.stdout, result.stdout
    for key, content in (await everything_in(redis)).items():
        assert "U7" not in key and "dan" not in content, (key, content)
    assert await redis.get(KEYS.display_name("T1", "U2")) == "bob"


async def test_purge_older_than(stored: Store, redis_url: str, redis: aioredis.Redis, tmp_path: Path) -> None:
    days = (time.time() - 1650000000) / 86400  # between the old thread and the new ones
    dry = admin(redis_url, "purge", "--older-than", f"{days:.0f}", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.startswith("would purge 1 conversations (2 turns)")
    assert await redis.exists(KEYS.turns(OLD)) == 1
    result = admin(redis_url, "purge", "--older-than", f"{days:.0f}", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("purged 1 conversations (2 turns)")
    assert await redis.exists(KEYS.turns(OLD), KEYS.meta(OLD)) == 0
    assert await redis.exists(KEYS.turns(NEW), KEYS.turns(DM)) == 2

    for bad_args in (["purge"], ["purge", "--older-than", "soon"], ["purge", "--older-than", "0"]):
        bad = admin(redis_url, *bad_args, cwd=tmp_path)
        assert bad.returncode == 2 and "--older-than" in bad.stderr, bad_args


async def test_redis_url_is_read_from_dotenv(stored: Store, redis_url: str, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"REDIS_URL={redis_url}\nSLACK_BOT_TOKEN=\n")
    result = admin(None, "export", "--team", "T1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_unreachable_redis_is_one_clear_line(tmp_path: Path) -> None:
    result = admin("redis://127.0.0.1:1/0", "stats", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: Redis did not answer (ConnectionError); check REDIS_URL"
    malformed = admin("http://localhost", "stats", cwd=tmp_path)
    assert malformed.returncode == 1 and "REDIS_URL is malformed" in malformed.stderr
