"""The throughput search's decisions (bench/throughput.py), on made-up probe results: which rates
it tries, and what it reports as sustained."""

from __future__ import annotations

from typing import Any

from bench.throughput import _sustained, find_sustained


def capacity(short: float, full: float) -> tuple[list[tuple[float, float]], Any]:
    """A fake bot that holds any rate up to `short` for a short probe and up to `full` for the
    full-length run; the probes tried are recorded."""
    tried: list[tuple[float, float]] = []

    async def probe(rate: float, seconds: float) -> dict[str, Any]:
        tried.append((rate, seconds))
        limit = full if seconds >= 30 else short
        return {"holds": rate <= limit, "offered_turns_per_second": rate, "sent_turns_per_second": rate}

    return tried, probe


async def test_doubles_bisects_and_confirms_the_best_rate() -> None:
    tried, probe = capacity(short=230, full=230)
    confirmed, failed = await find_sustained(probe, 50, 800, 10, 30)
    assert [rate for rate, _ in tried] == [50, 100, 200, 400, 300, 250, 225, 225]
    assert tried[-1] == (225, 30)
    assert confirmed is not None and _sustained(confirmed) == 225
    assert failed == 250


async def test_steps_down_when_the_full_run_does_not_hold() -> None:
    tried, probe = capacity(short=210, full=180)
    confirmed, _ = await find_sustained(probe, 50, 800, 10, 30)
    assert [rate for rate, seconds in tried if seconds == 30] == [200, 170]
    assert confirmed is not None and confirmed["offered_turns_per_second"] == 170


async def test_nothing_held() -> None:
    _, probe = capacity(short=10, full=10)
    assert await find_sustained(probe, 50, 800, 10, 30) == (None, 50)


def test_sustained_is_the_offered_rate_or_what_was_sent_when_less() -> None:
    assert _sustained({"offered_turns_per_second": 200, "sent_turns_per_second": 200.4}) == 200
    assert _sustained({"offered_turns_per_second": 200, "sent_turns_per_second": 187.5}) == 187.5
    assert _sustained({"offered_turns_per_second": 200, "sent_turns_per_second": None}) == 200
