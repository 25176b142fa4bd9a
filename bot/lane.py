"""A lane for the Slack calls people wait to see: a thread with an event loop and a client of its own.

In a burst of questions the main loop has hundreds of tasks ready at once, and every step of a
call made there (sending it, reading Slack's answer) waits for a pass of the loop that serves
them all: 100–200 ms a step in a burst of 500. The "is thinking…" sign needs nothing of the main
loop's once its message is queued, so it is sent from here, where the only wait is for the
interpreter to switch threads (milliseconds). Its caller still awaits the result on the main
loop, so that the answer never overtakes its sign.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

T = TypeVar("T")

CLOSE_SECONDS = 5.0


class LaneClosed(RuntimeError):
    """The lane was closed before or during the call."""


class SlackLane:
    """`make_client` is called on the lane's own loop, so that the client's HTTP session
    belongs to it. Start it before the first call; close it after the last."""

    def __init__(self, make_client: Callable[[], AsyncWebClient]) -> None:
        self._make_client = make_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: AsyncWebClient | None = None
        self._closing = False

    async def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slack-lane", daemon=True)
        self._thread.start()
        self._client = await self._on_lane(self._create_client())

    async def api_call(self, method: str, **kwargs: Any) -> AsyncSlackResponse:
        """`AsyncWebClient.api_call`, made on the lane. Cancelling the caller cancels the call;
        a call cut short by `close` raises LaneClosed."""
        if self._client is None:
            raise LaneClosed("the Slack lane is not running")
        return await self._on_lane(self._call(self._client, method, kwargs))

    async def close(self) -> None:
        """Cut short the calls still under way (their callers get LaneClosed) and stop the thread."""
        client, self._client = self._client, None
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        await self._on_lane(self._shut_down(client))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, CLOSE_SECONDS)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _create_client(self) -> AsyncWebClient:
        return self._make_client()

    async def _call(self, client: AsyncWebClient, method: str, kwargs: dict[str, Any]) -> AsyncSlackResponse:
        try:
            return await client.api_call(method, **kwargs)
        except asyncio.CancelledError:
            if self._closing:
                raise LaneClosed("the Slack lane closed during the call") from None
            raise

    async def _shut_down(self, client: AsyncWebClient | None) -> None:
        self._closing = True
        calls = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if client is not None and client.session is not None:
            await client.session.close()

    async def _on_lane(self, work: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))
