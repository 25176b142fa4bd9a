"""Wiring: the Bolt app, Socket Mode or HTTP mode, the health listener, start and graceful stop."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.authorization.async_single_team_authorization import AsyncSingleTeamAuthorization
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.internals import parse_body
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot import listeners
from bot.breaker import CircuitBreaker
from bot.config import Settings
from bot.connection_turnover import ConnectionTurnover
from bot.context import ContextBuilder
from bot.delivery import Delivery
from bot.events import BotIdentity, MessageIntake, MessageListeners, shape_problem, until_queued
from bot.health import health_handler
from bot.heap import trim_heap_forever
from bot.llm import ChatModel
from bot.lost_answers import RepeatSafeRetryHandler, RepeatSafeServerErrorRetryHandler
from bot.rate_limit import BudgetedSlack, SlackBudget
from bot.slack_client import SlackClient
from bot.socket_mode import SocketModeHandler
from bot.store import Store, StoreUnavailable
from bot.supervisor import orphaned
from bot.tokens import TokenBudget, TokenCounter
from bot.turn import Limits, TurnRunner
from bot.workspace import Workspace

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 1024 * 1024  # Slack's own events are far smaller
# Connections waiting to be accepted. aiohttp's 128 overflows when Slack opens hundreds at once (a
# burst of questions), and each connection dropped waits a second for the sender's retry.
LISTEN_BACKLOG = 2048
ORPHAN_CHECK_SECONDS = 1.0
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default: 700)
SOCKET_PING_SECONDS = 5.0
IDENTITY_RETRY_FIRST_SECONDS = 1.0  # auth.test asked again after a failure at start, doubling
IDENTITY_RETRY_MAX_SECONDS = 60.0
REJECTED_TOKEN_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked"}
SLACK_CALL_TIMEOUT_SECONDS = 30.0  # one Web API call, as slack_sdk's own default
BAD_SIGNATURE_LOG_SECONDS = 60.0  # at most one warning a minute about refused signatures
# Past the grace, the stop's steps that wait for Redis (the turns left letting go of their threads,
# the leave, the store's close letting batches on their way finish) share this one deadline. Each
# had a bound of its own (5 + 1 + 5 s): with Redis not answering, a stop ran 11 s past its grace,
# past a platform's kill after the default grace (Heroku's 30 s). Against a Redis that answers
# they take milliseconds; a leave that cannot land is no loss (the process's liveness, 5 s, frees
# its locks all the same).
STOP_PAST_GRACE_SECONDS = 2.0


class StartupError(Exception):
    """The bot cannot start; the message is one line saying why and what to do."""


@dataclass
class _Running:
    session: aiohttp.ClientSession
    runner: web.AppRunner
    socket_handler: SocketModeHandler | None


class SupportBot:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.store = Store(
            redis_url,
            conversation_ttl_days=settings.conversation_ttl_days,
            lock_ttl_seconds=settings.thread_lock_ttl_seconds,
            key_prefix=settings.redis_key_prefix,
        )
        self.breaker = CircuitBreaker(
            failures_to_open=settings.llm_breaker_failures,
            cooldown_seconds=settings.llm_breaker_cooldown_seconds,
        )
        self.model = ChatModel(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            timeout_seconds=settings.llm_timeout_seconds,
            max_retries=settings.llm_max_retries,
            retry_base_seconds=settings.llm_retry_base_seconds,
            retry_max_seconds=settings.llm_retry_max_seconds,
            first_token_timeout_seconds=settings.llm_first_token_timeout_seconds,
            idle_timeout_seconds=settings.llm_idle_timeout_seconds,
            max_answer_tokens=settings.max_answer_tokens,
        )
        self._verifier = (
            SignatureVerifier(settings.slack_signing_secret) if settings.slack_signing_secret else None
        )
        self._running: _Running | None = None
        self._bad_signatures = _BadSignatures()
        self._intake = MessageIntake()
        # Only several processes on one port need their clients to reconnect now and then.
        turnover = settings.processes > 1 and settings.http_requests_per_connection > 0
        self._turnover = ConnectionTurnover(settings.http_requests_per_connection) if turnover else None
        self._socket_connect: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._trimming: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None
        self._identity_lookup: asyncio.Task[None] | None = None
        self._stopping = False  # from SIGTERM on: /health says so
        self.app: AsyncApp | None = None
        self.turns: TurnRunner | None = None

    @property
    def mode(self) -> str:
        return "socket" if self.settings.socket_mode else "http"

    async def start(self) -> None:
        settings = self.settings
        if problem := await self.store.topology_problem():
            await self.store.close()
            raise StartupError(problem)
        # slack_sdk's 30-s timeout applies only to sessions it makes itself; this one is shared,
        # and aiohttp's own default is five minutes (auth.test hanging that long held a stop).
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLACK_CALL_TIMEOUT_SECONDS))
        client = SlackClient(
            token=settings.slack_bot_token,
            base_url=settings.slack_api_url,
            session=session,
            retry_handlers=[
                RepeatSafeRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=2),
                RepeatSafeServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        try:
            auth_test = await _check_token(client)
            if settings.socket_mode:
                await _check_app_token(session, settings.slack_api_url, settings.slack_app_token)
            if (problem := await self.model.key_problem()) is not None:
                raise StartupError(problem)
        except StartupError:
            await session.close()
            await self.model.close()
            await self.store.close()
            raise
        self.app = AsyncApp(
            client=client,
            # HTTP requests are verified in `_slack_events` before Bolt parses them.
            request_verification_enabled=False,
            process_before_response=False,
        )
        _share_identity(self.app, auth_test)
        # The calls a turn makes handle 429s themselves (pausing the shared budget; delivery keeps
        # its text), so their client retries only broken connections and Slack's 5xx.
        turn_client = SlackClient(
            token=settings.slack_bot_token,
            base_url=settings.slack_api_url,
            session=session,
            retry_handlers=[
                RepeatSafeRetryHandler(max_retry_count=2),
                RepeatSafeServerErrorRetryHandler(max_retry_count=2),
            ],
        )
        budget = SlackBudget(self.store, scale=settings.slack_rate_limit_scale)
        budgeted = BudgetedSlack(turn_client, budget)
        self.turns = TurnRunner(
            store=self.store,
            workspace=Workspace(budgeted, self.store),
            delivery=Delivery(budgeted),
            model=self.model,
            context=ContextBuilder(
                self.store,
                settings.system_prompt,
                counter=TokenCounter(settings.openai_model),
                budget=TokenBudget(settings.max_context_tokens, settings.max_answer_tokens),
                model=self.model,
            ),
            breaker=self.breaker,
            limits=Limits(
                max_message_chars=settings.max_message_chars,
                user_per_minute=settings.rate_limit_user_per_minute,
                user_per_day=settings.rate_limit_user_per_day,
                channel_per_minute=settings.rate_limit_channel_per_minute,
            ),
            max_concurrent_turns=settings.max_concurrent_turns,
        )
        message_listeners = listeners.register(self.app, self.turns, self.store)
        if auth_test is not None:
            self._intake.connect(message_listeners, _identity(auth_test))
        else:
            self._identity_lookup = asyncio.create_task(self._learn_identity(client, message_listeners))
        if not await self.store.ping():
            log.error("redis is unreachable at start; /health reports 503 until it answers")
        # Alive before it takes any thread: should it die, its locks are taken over within its
        # liveness (a lock of a process never heard of waits for its own lifetime to end).
        try:
            async with asyncio.timeout(self.turns.beat_seconds):
                await self.turns.beat()
        except (StoreUnavailable, RedisError, OSError, TimeoutError):
            pass  # Redis is out of reach (said above); the beats go on trying
        self._beating = asyncio.create_task(self._beat_forever())

        socket_handler = None
        if settings.socket_mode:
            # A short ping notices a silently dropped socket within seconds, not the SDK's 10 s.
            socket_handler = SocketModeHandler(
                self.app,
                settings.slack_app_token,
                ping_interval=SOCKET_PING_SECONDS,
                intake=self._intake,
            )
        web_app = web.Application(client_max_size=MAX_EVENT_BYTES)
        web_app.router.add_get(
            "/health",
            health_handler(
                self.store,
                mode=self.mode,
                socket_connected=socket_handler.client.is_connected if socket_handler else None,
                breaker=self.breaker,
                stopping=lambda: self._stopping,
            ),
        )
        if not settings.socket_mode:
            web_app.router.add_post("/slack/events", self._slack_events)
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        self._running = _Running(session, runner, socket_handler)
        # With PROCESSES > 1 every process binds the port and the kernel spreads connections.
        site = web.TCPSite(
            runner, settings.host, settings.port, backlog=LISTEN_BACKLOG, reuse_port=settings.processes > 1
        )
        try:
            await site.start()
        except OSError as error:
            await self.stop(grace_seconds=0)
            raise StartupError(_listen_problem(settings.host, settings.port, error)) from None
        self._recovery = asyncio.create_task(self._recover_forever())
        self._trimming = asyncio.create_task(trim_heap_forever())
        if socket_handler is not None:
            # The SDK keeps retrying until Slack answers; /health says 503 meanwhile.
            self._socket_connect = asyncio.create_task(socket_handler.connect_async())
        log.info("bot started mode=%s port=%d model=%s", self.mode, settings.port, settings.openai_model)

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Turn /health to 503 (a load balancer stops sending events here; those that still
        come over HTTP are taken), close the Socket Mode connection (Slack sends its events to
        the app's other connections), give answers in flight `grace_seconds` to finish, and leave
        the rest journaled for the next process."""
        running, self._running = self._running, None
        if running is None:
            return
        self._stopping = True
        for task in (self._socket_connect, self._recovery, self._identity_lookup, self._trimming):
            if task is not None:
                task.cancel()
        if running.socket_handler is not None:
            await running.socket_handler.close_async()
        await running.runner.shutdown()
        if self.turns is not None:
            grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
            await self.turns.drain(grace)
            if self.turns.in_flight:
                log.warning("grace period over; %d turns left for recovery", self.turns.in_flight)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_PAST_GRACE_SECONDS
        unfinished: list[str] = []
        beat = self._beating
        if beat is not None:
            # The beats end before the turns left are abandoned, so that no work a beat starts
            # outlives the stop. A beat already sent may still run after the leave (Store.leave).
            beat.cancel()
            await asyncio.wait([beat], timeout=max(0.0, deadline - loop.time()))
        if self.turns is not None:
            # The leave goes out as the turns left are cancelled (abandon, at once), with their
            # releases, not after them: a Redis slow to take those left it no time before the
            # deadline, and it was never sent. A lock taken over meanwhile is not released by
            # its old token.
            leaving = asyncio.ensure_future(self.turns.leave()) if beat is not None else None
            if not await self.turns.abandon(deadline - loop.time()):
                unfinished.append("turns letting go of their threads")
            if leaving is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        await leaving
                except TimeoutError:
                    unfinished.append("the leave")
                except (StoreUnavailable, RedisError, OSError):
                    pass  # its liveness frees the process's locks within 5 s all the same
        if unfinished:
            log.warning(
                "stop's deadline reached (%g s past the grace), redis not answering: %s cut short; "
                "locks left are taken over once this process's liveness lapses",
                STOP_PAST_GRACE_SECONDS,
                " and ".join(unfinished),
            )
        await running.runner.cleanup()
        await self.model.close()
        await self.store.close(wait_seconds=deadline - loop.time())
        await running.session.close()
        log.info("bot stopped")

    async def _recover_forever(self) -> None:
        """Pick up turns left by a crashed or stopped process, and deferred deliveries."""
        assert self.turns is not None
        interval = self.settings.recovery_interval_seconds
        # A thread counts as waiting once nobody has moved it for two rounds: a deferred delivery
        # is tried again no sooner (Slack gets its time to recover: 5 tries span a minute or so),
        # while a dead process's threads, whose locks outlive that, are taken in the first round
        # after their locks expire.
        idle_seconds = 2 * interval
        while True:
            try:
                started = await self.turns.recover(idle_seconds=idle_seconds)
                if started:
                    # Workers, not threads taken: with several processes, one takes each thread.
                    log.info("recovery found %d waiting threads, started a worker for each", started)
            except StoreUnavailable:
                pass  # /health already says so; try again next round
            except RedisError as error:
                log.warning("recovery round failed error=%s", type(error).__name__)
            except Exception:  # the task must go on: without it, no turn left behind is picked up
                log.exception("recovery round failed")
            await asyncio.sleep(interval)

    async def _beat_forever(self) -> None:
        """Say that this process is alive, and take over the threads of processes that stopped
        saying so, every beat (a second): a killed process's threads move within its liveness
        (5 s), not when its thread locks expire."""
        assert self.turns is not None
        while True:
            try:
                await self.turns.beat()
                # A stopping process takes on no thread of another, as its recovery stops at once:
                # one it could not finish in its grace would be left half shown.
                if not self._stopping and (taken := await self.turns.take_over_orphans()):
                    log.info("recovery found %d threads of a gone process, started a worker for each", taken)
            except StoreUnavailable:
                pass  # /health already says so
            except Exception as error:  # the task must go on: without beats, others take our threads
                log.warning("liveness beat failed error=%s", type(error).__name__)
            await asyncio.sleep(self.turns.beat_seconds)

    async def _learn_identity(self, client: AsyncWebClient, message_listeners: MessageListeners) -> None:
        """Slack did not answer auth.test at start. Until it does, Bolt dispatches new messages
        (and acknowledges them before they are queued); ask again, then take them directly."""
        assert self.app is not None
        delay = IDENTITY_RETRY_FIRST_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                auth_test = await _check_token(client)
            except StartupError as error:
                log.error("%s", error)  # Bolt's own checks refuse every event meanwhile
                auth_test = None
            if auth_test is not None:
                _share_identity(self.app, auth_test)
                self._intake.connect(message_listeners, _identity(auth_test))
                log.info("slack answered auth.test; new messages are taken directly")
                return
            delay = min(delay * 2, IDENTITY_RETRY_MAX_SECONDS)

    async def _slack_events(self, request: web.Request) -> web.Response:
        """POST /slack/events. With PROCESSES > 1, every HTTP_REQUESTS_PER_CONNECTION-th response
        on a connection closes it (bot/connection_turnover.py)."""
        response = await self._slack_request(request)
        if self._turnover is not None and self._turnover.is_last(request.transport):
            response.force_close()  # says `Connection: close`, and closes once it is written
        return response

    async def _slack_request(self, request: web.Request) -> web.Response:
        """Verify the signature; a person's new message goes to its listener (bot/events.py),
        anything else to Bolt's dispatch."""
        assert self.app is not None and self._verifier is not None
        raw = await request.read()
        if not self._signed_by_slack(request, raw):
            self._bad_signatures.noted()
            return web.json_response({"error": "invalid or stale request signature"}, status=401)
        try:
            text = raw.decode("utf-8")
            body = parse_body(text, request.content_type)  # Bolt's own parser
        except (UnicodeDecodeError, ValueError, TypeError, AttributeError, KeyError, IndexError):
            # Bolt's parser assumes a JSON object or form data; anything else is the sender's fault.
            return web.json_response({"error": "body is not valid JSON or form data"}, status=400)
        problem = shape_problem(body)
        if problem is not None:
            return web.json_response({"error": f"not a Slack request: {problem}"}, status=400)
        if body.get("type") == "app_rate_limited":
            log.warning("slack reports this app is over its event rate limit; events are being dropped")
        if taken := self._intake.take(body):
            if not await until_queued(taken):
                # Not stored (Redis down, say): a 5xx makes Slack send it again, as it would
                # have had this process died.
                return web.json_response({"error": "the event could not be stored now"}, status=503)
            return web.Response()
        try:
            headers = dict(request.headers)
            bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=headers)
            bolt_response = await self.app.async_dispatch(bolt_request)
        except Exception as error:  # a request of a shape Bolt cannot handle must not be a 500
            log.warning("slack request rejected error=%s", type(error).__name__)
            return web.json_response({"error": "request could not be processed"}, status=400)
        if bolt_response.status == 404:
            # A well-formed Slack request the bot has no use for: acknowledge it, so that Slack
            # neither retries it nor counts it as a failed delivery.
            return web.json_response({"ok": True, "ignored": True})
        if bolt_response.status >= 500:
            # Bolt answers 500 when its own middleware trips on an odd shape; the sender's fault.
            log.warning("slack request could not be processed by bolt status=%d", bolt_response.status)
            return web.json_response({"error": "request could not be processed"}, status=400)
        if bolt_response.status == 200:
            self._intake.bolt_dispatched(body)
        return await to_aiohttp_response(bolt_response)

    def _signed_by_slack(self, request: web.Request, body: bytes) -> bool:
        """Slack's v0 signature, with a timestamp no older than five minutes (no replays)."""
        assert self._verifier is not None
        try:
            return self._verifier.is_valid(
                body=body,
                timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
                signature=request.headers.get("X-Slack-Signature", ""),
            )
        except ValueError:  # a timestamp that is not a number
            return False
        except TypeError:  # a signature with characters no hex digest has (compare_digest refuses)
            return False


class _BadSignatures:
    """Requests refused for their signature, said in the log at most once a minute: a wrong
    SLACK_SIGNING_SECRET refuses every request (Slack then says the URL did not answer its
    challenge), and nothing else would show it; anyone can send such requests, hence the limit."""

    def __init__(self) -> None:
        self._count = 0
        self._logged_at: float | None = None

    def noted(self) -> None:
        self._count += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= BAD_SIGNATURE_LOG_SECONDS:
            log.warning(
                "refused %d request(s) with an invalid or stale signature: if Slack's own are among "
                "them, check SLACK_SIGNING_SECRET (Basic Information → App Credentials)",
                self._count,
            )
            self._count, self._logged_at = 0, now


def _share_identity(app: AsyncApp, auth_test: AsyncSlackResponse | None) -> None:
    """Bolt's single-workspace check calls auth.test for every event that arrives before its
    first call has answered: hundreds in a burst after a restart. It gets the start-up answer."""
    if auth_test is None:
        return  # Slack was unreachable at start: Bolt asks on the first events
    for middleware in app._async_middleware_list:  # Bolt has no public way to give it
        if isinstance(middleware, AsyncSingleTeamAuthorization):
            middleware.auth_test_result = auth_test


def _identity(auth_test: AsyncSlackResponse | None) -> BotIdentity | None:
    """The bot's user id and bot id, when Slack told them at start."""
    user_id = auth_test.get("user_id") if auth_test is not None else None
    if not isinstance(user_id, str) or not user_id:
        return None
    bot_id = auth_test.get("bot_id")
    return BotIdentity(user_id, bot_id if isinstance(bot_id, str) else None)


async def _check_token(client: AsyncWebClient) -> AsyncSlackResponse | None:
    """Fail at start, in one line, when Slack rejects the bot token; Slack's answer, or None
    when it could not be asked now."""
    try:
        return await client.auth_test()
    except SlackApiError as error:
        # Slack's answer, or (a reply that said JSON and was not) the raw HTTP response.
        code = error.response.get("error") if isinstance(error.response, AsyncSlackResponse) else None
        if code in REJECTED_TOKEN_ERRORS:
            raise StartupError(
                f"SLACK_BOT_TOKEN was rejected by Slack ({code}): copy the current Bot User "
                "OAuth Token from your app's OAuth & Permissions page."
            ) from None
        log.warning("auth.test failed error=%s; carrying on", code)
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("slack unreachable for auth.test error=%s; carrying on", type(error).__name__)
    return None


async def _check_app_token(session: aiohttp.ClientSession, api_url: str, app_token: str | None) -> None:
    """Fail at start, in one line, when Slack rejects the app-level token (Socket Mode's
    client would otherwise log a traceback every few seconds, retrying for ever, while the bot
    looks started). It opens no connection: the URL Slack gives for one is left unused."""
    client = SlackClient(token=app_token, base_url=api_url, session=session)
    try:
        await client.apps_connections_open(app_token=app_token or "")
    except SlackApiError as error:
        code = error.response.get("error") if isinstance(error.response, AsyncSlackResponse) else None
        if code in REJECTED_TOKEN_ERRORS or code == "not_allowed_token_type":
            raise StartupError(
                f"SLACK_APP_TOKEN was rejected by Slack ({code}): copy an App-Level Token with the "
                "connections:write scope from your app's Basic Information page."
            ) from None
        log.warning("apps.connections.open failed error=%s; carrying on", code)
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("slack unreachable for apps.connections.open error=%s; carrying on", type(error).__name__)


def _settle_garbage_collector() -> None:
    """What start-up built (modules, the tokenizer's tables, clients) lives as long as the process:
    it leaves the collector's view (gc.freeze), so full collections walk only what turns create.
    Young collections run less often: a turn allocates thousands of short-lived objects, and the
    default (every 700 allocations) promoted in-flight turns' objects into older generations,
    whose collections then paused the loop for up to 0.3 s under load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(
    settings: Settings, redis_url: str, *, supervisor_pid: int | None = None, ready_fd: int | None = None
) -> None:
    """Run the bot until SIGTERM or SIGINT (or until its supervisor is gone), then stop
    gracefully. `ready_fd`: a pipe to write a byte to once serving (bot/supervisor.py)."""
    bot = SupportBot(settings, redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_stop_when_orphaned(supervisor_pid, stop)) if supervisor_pid else None
    try:
        await bot.start()
        _settle_garbage_collector()
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"1")
            except OSError:
                pass  # the supervisor is gone: _stop_when_orphaned stops this process
            finally:
                os.close(ready_fd)
        await stop.wait()
        log.info("stopping: finishing answers in flight")
    finally:
        if watch is not None:
            watch.cancel()
        await bot.stop()


async def _stop_when_orphaned(supervisor_pid: int, stop: asyncio.Event) -> None:
    # A supervisor killed outright cannot pass a stop on; its processes must not run on unseen.
    while not orphaned(supervisor_pid):  # noqa: ASYNC110 - no event says a parent died
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
    log.warning("the supervisor (pid %d) is gone; stopping", supervisor_pid)
    stop.set()


def _listen_problem(host: str, port: int, error: OSError) -> str:
    """One line on why the HTTP listener could not open, naming the setting to change."""
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        reason = error.strerror or str(error)
        return (
            f"HOST {host} cannot be listened on ({reason}): set HOST to an address of this machine,"
            " such as 0.0.0.0 (every interface) or 127.0.0.1."
        )
    reason = os.strerror(error.errno) if error.errno else str(error)  # asyncio's own is long
    return (
        f"PORT {port} cannot be opened on {host} ({reason}):"
        " set PORT to a free port, or stop the program that holds it."
    )
