"""The load generator sends a delivery the bot did not acknowledge again, as Slack does: at once,
then after longer waits, those in the background so that a measured step does not wait for them."""

from __future__ import annotations

from aiohttp import web

from bench.rig import ModelShape, Rig
from tests.conftest import free_port


async def test_an_unacknowledged_delivery_is_sent_again_at_once_then_after_a_wait_in_the_background() -> None:
    seen: list[str | None] = []

    async def events(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Slack-Retry-Num"))
        return web.Response(status=200 if len(seen) > 2 else 500)  # the third attempt gets through

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rig = Rig(ModelShape(0.0, 0.0, answer_chars=20, chunk_chars=20))
    await rig.start()
    try:
        rig.slack.retry_failed_deliveries(waits=(0.0, 0.3))
        route = f"http://127.0.0.1:{port}/slack/events"
        question = rig.prepare("C1", router=lambda: [route])
        question.deliveries = question.deliveries[:1]  # the `message` event alone
        asked = await rig.send(question)
        # The first attempt and the one at once failed; send() did not wait for the later one.
        assert seen == [None, "1"] and not asked.deliveries[0].acked
        await rig.slack.wait_for(lambda: len(seen) >= 3, what="the retry after a wait")
        assert seen == [None, "1", "2"]  # a retry's number, as Slack numbers them
        assert rig.retried == 2
    finally:
        await rig.stop()
        await runner.cleanup()
