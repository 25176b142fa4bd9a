"""Which response closes its connection, with PROCESSES > 1 (bot/connection_turnover.py)."""

from __future__ import annotations

import asyncio
import gc

from bot.connection_turnover import ConnectionTurnover


class _Transport(asyncio.Transport):
    """A stand-in for the connection's transport: only its identity matters here."""


def test_every_nth_request_on_a_connection_is_its_last_and_connections_count_apart() -> None:
    turnover = ConnectionTurnover(3)
    first, second = _Transport(), _Transport()
    assert [turnover.is_last(first) for _ in range(7)] == [False, False, True, False, False, True, False]
    assert [turnover.is_last(second) for _ in range(3)] == [False, False, True]


def test_one_request_per_connection_closes_each_and_a_gone_client_is_not_counted() -> None:
    turnover = ConnectionTurnover(1)
    assert turnover.is_last(_Transport())
    assert not turnover.is_last(None)


def test_a_connection_the_client_closed_is_forgotten() -> None:
    turnover = ConnectionTurnover(100)
    transport = _Transport()
    turnover.is_last(transport)
    del transport
    gc.collect()
    assert len(turnover._carried) == 0
