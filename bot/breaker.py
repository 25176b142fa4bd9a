"""A circuit breaker for the model: after repeated failed turns, stop calling it for a while and
answer at once; then let one probe through, and close again when it succeeds. One process's
breaker; bot/shared_breaker.py keeps those of all processes in step."""

from __future__ import annotations

import time
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, *, failures_to_open: int, cooldown_seconds: float) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_seconds = cooldown_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at < self.cooldown_seconds:
            return "open"
        return "half_open"

    @property
    def probing(self) -> bool:
        """A probe is in flight: the one call let through after the cooldown."""
        return self._probe_in_flight

    def allow(self) -> bool:
        """May this turn call the model? In half-open state only one probe at a time may."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def succeeded(self) -> bool:
        """A turn's call went through. True when this closed an open breaker (a probe's success),
        for the other processes to learn."""
        closed = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False
        return closed

    def failed(self, counted_everywhere: int = 0) -> bool:
        """A turn's call failed after its retries (a model that is down, not a bad request);
        `counted_everywhere`: such turns in a row in all processes, this one included. True when
        this opened the breaker (again), for the other processes to learn."""
        # Redis's count, when there is one, is the row: it includes this one, and a success in
        # another process since (which this one learns only at its next beat) ended it.
        self._failures = counted_everywhere or self._failures + 1
        opened = self._probe_in_flight or self._failures >= self.failures_to_open
        if opened:
            self._opened_at = time.monotonic()
        self._probe_in_flight = False
        return opened

    def learn(self, *, open_seconds_left: float, failures_in_a_row: int) -> None:
        """What all processes found, as Redis holds it: the seconds left of a breaker one of them
        opened, and the failed turns in a row counted in all (a success anywhere ends a row)."""
        self._failures = min(self._failures, failures_in_a_row)
        if open_seconds_left <= 0:
            return
        # Open for what is left of that cooldown (unless this one's own lasts longer), then let
        # a probe through as usual.
        opened_at = time.monotonic() - (self.cooldown_seconds - open_seconds_left)
        if self._opened_at is None or opened_at > self._opened_at:
            self._opened_at = opened_at

    def closed_elsewhere(self) -> None:
        """Another process's probe found the model back: closed, as this one's own probe would
        have closed it."""
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def released(self) -> None:
        """A permitted call ended without telling us about the model's health (e.g. cancelled)."""
        self._probe_in_flight = False
