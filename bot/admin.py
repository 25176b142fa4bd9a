"""The admin command line: look into, export and prune what the bot keeps in Redis.

    python -m bot stats
    python -m bot show T0123:C0456:1700000000.000100      (or a Slack permalink)
    python -m bot export [--team T0123] > conversations.jsonl
    python -m bot forget U0789 [--team T0123] [--scan]
    python -m bot purge --older-than 90 [--dry-run]

It needs only Redis: REDIS_URL (and REDIS_KEY_PREFIX, if the bot has one) from the environment
or .env, else the local Redis that `python app.py` runs under ./var/redis. No Slack or OpenAI
credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from dotenv import find_dotenv, load_dotenv
from redis.exceptions import RedisError

from bot.redis_url import check_key_prefix, check_redis_url
from bot.store import DAY, ForgetIncomplete, Store, ThreadKey
from bot.tokens import TokenCounter

LOCAL_REDIS_SOCKET = Path(__file__).resolve().parents[1] / "var" / "redis" / "redis.sock"

THREAD_SYNTAX = (
    "TEAM:CHANNEL:THREAD_TS (e.g. T0123:C0456:1700000000.000100; THREAD_TS 'dm' for a DM's top "
    "level), or a Slack message link (https://…slack.com/archives/C0456/p1700000000000100)"
)
_THREAD = re.compile(r"^([A-Z0-9]+):([A-Z0-9]+):(\d{9,10}\.\d{6}|dm)$")
_PERMALINK_TS = re.compile(r"^p(\d{9,10})(\d{6})$")
_USER = re.compile(r"^[UW][A-Z0-9]+$")
_TEAM = re.compile(r"^[TE][A-Z0-9]+$")


class AdminError(Exception):
    """A command that cannot be carried out; the message says why."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "show":
        thread = parse_thread(args.thread)
        if thread is None:
            parser.error(f"THREAD {args.thread!r} is not {THREAD_SYNTAX}")
        args.thread = thread
    if getattr(args, "user", None) is not None and not _USER.match(args.user):
        parser.error(f"USER {args.user!r} is not a Slack user id (like U0123ABCD)")
    if getattr(args, "team", None) is not None and not _TEAM.match(args.team):
        parser.error(f"--team {args.team!r} is not a Slack workspace id (like T0123ABCD)")
    if args.command == "purge" and not args.older_than > 0:
        parser.error(f"--older-than must be a positive number of days, got {args.older_than:g}")
    load_dotenv(find_dotenv(usecwd=True), override=False)
    try:
        store = Store(_redis_url(), conversation_ttl_days=_ttl_days(), key_prefix=_key_prefix())
        status = asyncio.run(_run(store, args))
        sys.stdout.flush()  # here, where a reader gone away (`| head`) can still be told apart
        return status
    except BrokenPipeError:
        # Whoever read the output stopped (`| head`): not Redis's fault, and nothing to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except AdminError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (RedisError, OSError) as error:
        print(f"error: Redis did not answer ({type(error).__name__}); check REDIS_URL", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Admin commands over the support bot's Redis (reads REDIS_URL from the "
        "environment or .env).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "stats",
        help="what is stored; processes alive, threads waiting, the model's breaker",
    )
    show = commands.add_parser("show", help="one conversation as stored, as JSON")
    show.add_argument("thread", metavar="THREAD", help=THREAD_SYNTAX)
    export = commands.add_parser("export", help="every conversation as JSON lines, for audit")
    export.add_argument("--team", help="only this workspace")
    forget = commands.add_parser("forget", help="delete everything stored about a person")
    forget.add_argument("user", metavar="USER", help="Slack user id, e.g. U0123ABCD")
    forget.add_argument("--team", help="only this workspace (default: every workspace that knows them)")
    forget.add_argument(
        "--scan", action="store_true", help="also search every conversation, not only those indexed"
    )
    purge = commands.add_parser("purge", help="delete conversations idle for longer than DAYS")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    purge.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    return parser


def parse_thread(text: str) -> ThreadKey | tuple[str, str] | None:
    """TEAM:CHANNEL:TS as a ThreadKey; a Slack link as (channel, thread ts), its team unknown."""
    if match := _THREAD.match(text):
        return ThreadKey(*match.groups())
    link = urlparse(text)
    parts = link.path.strip("/").split("/")
    if link.scheme != "https" or len(parts) != 3 or parts[0] != "archives":
        return None
    stamp = _PERMALINK_TS.match(parts[2])
    if stamp is None or not re.match(r"^[CDG][A-Z0-9]+$", parts[1]):
        return None
    thread = parse_qs(link.query).get("thread_ts", [f"{stamp.group(1)}.{stamp.group(2)}"])[0]
    return parts[1], thread


def _redis_url() -> str:
    url = os.environ.get("REDIS_URL", "").strip()
    if url:
        if problem := check_redis_url(url):
            raise AdminError(f"REDIS_URL is malformed: {problem}")
        return url
    if LOCAL_REDIS_SOCKET.exists():
        return f"unix://{LOCAL_REDIS_SOCKET}"
    raise AdminError(
        "REDIS_URL is not set and the local Redis of `python app.py` is not running: "
        "set REDIS_URL (in the environment or .env)"
    )


def _key_prefix() -> str | None:
    prefix = os.environ.get("REDIS_KEY_PREFIX", "").strip() or None
    if prefix and (problem := check_key_prefix(prefix)):
        raise AdminError(f"REDIS_KEY_PREFIX is malformed: {problem}")
    return prefix


def _ttl_days() -> float:
    raw = os.environ.get("CONVERSATION_TTL_DAYS", "").strip() or "30"
    try:
        return float(raw)
    except ValueError:
        raise AdminError(f"CONVERSATION_TTL_DAYS is malformed: expected a number, got {raw!r}") from None


async def _run(store: Store, args: argparse.Namespace) -> int:
    try:
        if problem := await store.topology_problem():
            raise AdminError(problem)
        command = {"stats": _stats, "show": _show, "export": _export, "forget": _forget, "purge": _purge}
        return await command[args.command](store, args)
    finally:
        await store.close()


async def _stats(store: Store, args: argparse.Namespace) -> int:
    counter = TokenCounter(os.environ.get("OPENAI_MODEL", "").strip() or "gpt-4o-mini")
    conversations = turns = tokens = summaries = 0
    for key in await store.conversation_keys():
        stored = await store.stored_conversation(key)
        if stored is None:
            continue
        conversations += 1
        turns += len(stored.turns)
        tokens += sum(counter.count(turn.text) for turn in stored.turns)
        summaries += "summary" in stored.meta
    rows = [
        ("conversations", conversations),
        ("turns", turns),
        (f"tokens ({counter.encoding_name})", tokens),
        ("summaries", summaries),
        ("people indexed", await store.count_keys(store.keys.user_index("*", "*"))),
    ]
    rows += [
        (f"records {pattern}", await store.count_keys(pattern))
        for pattern in store.keys.personal_record_patterns
    ]
    shared = await store.shared_state()
    rows += [
        ("bot processes alive", shared.processes_alive),
        ("threads waiting", shared.threads_waiting),
        ("model breaker open, seconds left", round(shared.breaker.open_seconds_left)),
        ("model turns failed in a row", shared.breaker.failures_counted),
        ("model probe under way", "yes" if shared.probing else "no"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")
    return 0


async def _show(store: Store, args: argparse.Namespace) -> int:
    key = await _resolve(store, args.thread)
    stored = await store.stored_conversation(key)
    if stored is None:
        raise AdminError(f"no stored conversation {key}")
    print(json.dumps(stored.to_record(), indent=2, ensure_ascii=False))
    return 0


async def _resolve(store: Store, thread: ThreadKey | tuple[str, str]) -> ThreadKey:
    if isinstance(thread, ThreadKey):
        return thread
    channel, ts = thread
    candidates = await store.conversations_in(channel, ts)
    if not candidates and channel.startswith("D"):
        candidates = await store.conversations_in(channel, "dm")  # a DM's top-level message
    if len(candidates) != 1:
        found = "none" if not candidates else ", ".join(map(str, candidates))
        raise AdminError(
            f"that link matches {len(candidates)} stored conversations ({found}): use {THREAD_SYNTAX}"
        )
    return candidates[0]


async def _export(store: Store, args: argparse.Namespace) -> int:
    for key in await store.conversation_keys(args.team):
        stored = await store.stored_conversation(key)
        if stored is not None:
            print(json.dumps(stored.to_record(), ensure_ascii=False, separators=(",", ":")))
    return 0


async def _forget(store: Store, args: argparse.Namespace) -> int:
    teams = [args.team] if args.team else await store.teams_knowing(args.user)
    if args.scan and not args.team:
        teams = sorted(set(teams) | {key.team for key in await store.conversation_keys()})
    if not teams:
        print(f"nothing stored about {args.user}")
        return 0
    for team in teams:
        try:
            forgotten = await store.forget_user(team, args.user, scan_conversations=args.scan)
        except ForgetIncomplete as error:
            raise AdminError(f"{args.user} kept writing in {error} meanwhile: run it again") from None
        print(
            f"forgot {args.user} in {team}: {forgotten.messages} messages (theirs and the answers to "
            f"them) from {forgotten.conversations} conversations, {forgotten.records} records, and their "
            "cached name"
        )
    return 0


async def _purge(store: Store, args: argparse.Namespace) -> int:
    cutoff = time.time() - args.older_than * DAY
    conversations = turns = 0
    for key in await store.conversation_keys():
        stored = await store.stored_conversation(key)
        last = stored.last_activity if stored is not None else None
        if stored is None or last is None or last >= cutoff:
            continue
        conversations += 1
        turns += len(stored.turns) if args.dry_run else await store.delete_conversation(key)
    verb = "would purge" if args.dry_run else "purged"
    print(f"{verb} {conversations} conversations ({turns} turns) idle for over {args.older_than:g} days")
    return 0
