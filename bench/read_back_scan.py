"""Read-back scan: what the step that stores an answer read back from Slack costs Redis.

When a turn's answer was read back from Slack by a newer turn (after Redis lost data) before the
turn stored it, the journal step that stores it scans the conversation's turns for the answer's
copies, inside Redis, which serves nobody else meanwhile. This seeds a DM of 4,000 turns of about
1,000 characters, all read back, stores one answer through the real `Store`, and reports the
step's time as Redis counts it, beside a script that only reads the same list (the floor any scan
pays), for several rounds:

- step ms: the step (EVALSHA) as Redis timed it;
- read ms: the read-only script (EVAL) right after it;
- ratio: step / read (the scan's own work over the read's).

    .venv/bin/python bench/read_back_scan.py [--pairs 2000] [--chars 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.store import IncomingMessage, Store, ThreadKey, Turn  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

DM = ThreadKey("T1", "D1", "dm")
READ_ONLY = """local n = 0
for _, t in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do n = n + #t end
return n"""


def _question(i: int, padding: str) -> Turn:
    ts = f"{1700000000 + i}.000100"
    return Turn(role="user", text=f"question {i}{padding}", ts=ts, user="U1", name="ann")


def _answer(i: int, padding: str) -> Turn:
    return Turn(role="assistant", text=f"answer {i}{padding}", ts=f"{1700000000 + i}.000200",
                reply_to=f"{1700000000 + i}.000100")  # fmt: skip


def _message(i: int) -> IncomingMessage:
    ts = f"{1700000000 + i}.000100"
    return IncomingMessage("T1", "D1", ts, "U1", "q", "answer", None, "dm", "UBOT", True)


async def _round(store: Store, pairs: int, padding: str) -> tuple[float, float]:
    await store.redis.flushall()
    turns = [turn for i in range(pairs) for turn in (_question(i, padding), _answer(i, padding))]
    await store.redis.rpush(store.keys.turns(DM), *(turn.to_json() for turn in turns))
    # Read back, all of it: a copy of any answer may be here.
    await store.redis.hset(store.keys.meta(DM), mapping={"read_back_upto": turns[-1].ts, "hydrated": "1"})
    await store.record_progress(_message(pairs), state="noted")  # loads the step's script
    await store.redis.config_resetstat()
    late = pairs // 2  # an answer in the middle, read back before its turn stored it
    whole = replace(_answer(late, ""), text=f"answer {late}, whole", messages=(_answer(late, "").ts,))
    await store.record_progress(_message(late), turns=(whole,), state="answered")
    await store.redis.eval(READ_ONLY, 1, store.keys.turns(DM))
    stats = await store.redis.info("commandstats")
    stored = [turn.text for turn in await store.recent_turns(DM, 2 * pairs)]
    if stored.count(whole.text) != 1 or len(stored) != 2 * pairs:
        raise RuntimeError("the answer did not give way to its copy once: the figures would mean nothing")
    return stats["cmdstat_evalsha"]["usec"] / 1000, stats["cmdstat_eval"]["usec"] / 1000


async def _run(pairs: int, chars: int, rounds: int) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-read-back-") as data:
        server = RedisServer(Path(data), appendonly=False)
        server.start()
        store = Store(server.url, conversation_ttl_days=1)
        try:
            return [await _round(store, pairs, " " + "x" * chars) for _ in range(rounds)]
        finally:
            await store.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=2000, help="question and answer pairs in the DM")
    parser.add_argument("--chars", type=int, default=1000, help="characters added to each turn")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results = asyncio.run(_run(args.pairs, args.chars, args.rounds))
    print(f"read-back scan: {2 * args.pairs} turns of ~{args.chars} characters, {args.rounds} rounds")
    print(f"{'step ms':>9} {'read ms':>9} {'ratio':>7}")
    for step, read in results:
        print(f"{step:9.1f} {read:9.1f} {step / read:7.2f}")
    print(f"median ratio {statistics.median(step / read for step, read in results):.2f}")


if __name__ == "__main__":
    main()
