"""Connections closed after a number of requests, so that several processes share the work.

With PROCESSES > 1 every process listens on the same port and the kernel hands each new
*connection* to one of them; requests on a kept-alive connection all go to the process that
accepted it. A client that keeps a few connections (a reverse proxy's pool, Slack's own) would
send nearly everything to one process for minutes (a twenty-minute soak split 193 / 5,579 turns
in one minute). Closing each connection after some requests makes the client open a new one,
which the kernel spreads again; nginx does the same (`keepalive_requests`).
"""

from __future__ import annotations

import asyncio
import weakref


class ConnectionTurnover:
    """Counts the requests each connection has carried and says which response should close it."""

    def __init__(self, requests_per_connection: int) -> None:
        self.requests_per_connection = requests_per_connection
        # Weak: a connection the client closed first is forgotten with its transport.
        self._carried: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = weakref.WeakKeyDictionary()

    def is_last(self, transport: asyncio.BaseTransport | None) -> bool:
        """Count one more request on `transport`; True when its response should close it."""
        if transport is None:  # the client is already gone
            return False
        carried = self._carried.get(transport, 0) + 1
        if carried >= self.requests_per_connection:
            self._carried.pop(transport, None)
            return True
        self._carried[transport] = carried
        return False
