"""A circuit breaker for the model: after repeated failed turns, stop calling it for a while and
answer at once; then let one probe through, and close again when it succeeds."""

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

    def allow(self) -> bool:
        """May this turn call the model? In half-open state only one probe at a time may."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def failed(self) -> None:
        """A turn's call failed after its retries (a model that is down, not a bad request)."""
        self._failures += 1
        if self._probe_in_flight or self._failures >= self.failures_to_open:
            self._opened_at = time.monotonic()
        self._probe_in_flight = False

    def released(self) -> None:
        """A permitted call ended without telling us about the model's health (e.g. cancelled)."""
        self._probe_in_flight = False
