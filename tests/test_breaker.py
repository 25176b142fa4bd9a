"""The model's circuit breaker on its own (bot/breaker.py); with real processes in test_outages.py."""

from __future__ import annotations

import time

from bot.breaker import CircuitBreaker


def test_the_failure_that_opens_it_says_so_and_so_does_the_success_that_closes_it() -> None:
    breaker = CircuitBreaker(failures_to_open=2, cooldown_seconds=60)
    assert breaker.succeeded() is False  # closed already: nothing to tell
    assert breaker.failed() is False
    assert breaker.failed() is True
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.succeeded() is True
    assert breaker.state == "closed"


def test_one_opened_elsewhere_keeps_it_open_for_the_rest_of_that_cooldown_then_lets_a_probe_through() -> None:
    breaker = CircuitBreaker(failures_to_open=5, cooldown_seconds=60)
    breaker.learn(open_seconds_left=0.2, failures_in_a_row=0)
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.25)
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one probe at a time


def test_one_opened_elsewhere_never_shortens_its_own_cooldown_and_nothing_left_changes_nothing() -> None:
    breaker = CircuitBreaker(failures_to_open=1, cooldown_seconds=60)
    breaker.learn(open_seconds_left=0, failures_in_a_row=0)
    assert breaker.state == "closed"
    breaker.failed()
    breaker.learn(open_seconds_left=0.01, failures_in_a_row=0)
    time.sleep(0.02)
    assert breaker.state == "open"


def test_failures_counted_in_all_processes_open_it_though_this_one_saw_fewer() -> None:
    breaker = CircuitBreaker(failures_to_open=3, cooldown_seconds=60)
    assert breaker.failed(counted_everywhere=2) is False
    assert breaker.failed(counted_everywhere=3) is True  # this process's second, the third in all
    assert breaker.state == "open"


def test_a_success_elsewhere_ends_this_process_s_row_of_failures() -> None:
    breaker = CircuitBreaker(failures_to_open=2, cooldown_seconds=60)
    breaker.failed(counted_everywhere=1)
    breaker.learn(open_seconds_left=0, failures_in_a_row=0)  # another process reached the model
    assert breaker.failed(counted_everywhere=1) is False
    assert breaker.state == "closed"
