"""Secrets: no token, signing secret or API key in logs, in what users see, or in /health, even when
an SDK puts one in an exception. The whole suite's log output is scanned too (conftest.session_log).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.llm import REJECTED, SETUP_PROBLEM, UNAVAILABLE
from bot.logs import REDACTED, CondenseReconnectErrors, RedactSecrets, configure_logging
from bot.turn import DELIVERY_FAILED
from tests.conftest import EMULATOR_SECRETS, TOKEN_SHAPES, RunningBot, StartBot, bot_env, emulator_default
from tests.emulators.openai_api import OpenAIEmulator, Reply, Status
from tests.emulators.slack import SlackEmulator

CHANNEL = "C800"
BOT = "UBOT"
SIGNING_SECRET = "8f14e45fceea167a5a36dedd4bea2543"  # shaped like Slack's: nothing to match but itself
# Shaped like real ones; none is configured, so only the patterns can catch them.
BOT_TOKEN = "xoxb-2712345678-5123456789012-AbCdEfGhIjKlMnOpQrStUvWx"
USER_TOKEN = "xoxp-2712345678-5123456789012-5123456789013-0123456789abcdef0123456789abcdef"
APP_TOKEN = "xapp-1-A0123ABCDEF-5123456789012-0123456789abcdef0123456789abcdef"
OPENAI_KEY = "sk-proj-Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7_aB0cD3eF6gH9-jK2"
EMULATOR_KEY = emulator_default(OpenAIEmulator, "api_key")
EMULATOR_SIGNING_SECRET = emulator_default(SlackEmulator, "signing_secret")


def leaked(text: str, *secrets: str) -> list[str]:
    return [s for s in (*secrets, *EMULATOR_SECRETS) if s in text] + TOKEN_SHAPES.findall(text)


@pytest.fixture
def redacted_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own with one handler, filtered as configure_logging filters production's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets([SIGNING_SECRET]))
    logger = logging.getLogger(f"tests.secrets.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


# ----- the filter -----


def test_configured_secrets_and_token_shapes_are_redacted_in_the_message(
    redacted_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = redacted_log
    log.info(
        f"signing={SIGNING_SECRET} bot={BOT_TOKEN} user={USER_TOKEN} app={APP_TOKEN} key={OPENAI_KEY} "
        "header='Authorization: Bearer abc.def-ghi' channel=C123"
    )
    line = out.getvalue()
    assert leaked(line, SIGNING_SECRET) == []
    assert "abc.def-ghi" not in line
    assert line.count(REDACTED) == 6
    assert "channel=C123" in line  # the rest of the line is kept


def test_secrets_in_the_arguments_are_redacted(redacted_log: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = redacted_log
    log.warning("auth failed token=%s settings=%r", BOT_TOKEN, {"key": OPENAI_KEY, "secret": SIGNING_SECRET})
    line = out.getvalue()
    assert leaked(line, SIGNING_SECRET) == []
    assert line.startswith("WARNING ") and "auth failed token=[redacted]" in line


async def sdk_error_with_the_key_in_it(llm: OpenAIEmulator) -> openai.AuthenticationError:
    """What the OpenAI SDK raises on a 401 whose error body quotes the key: its message is the body."""
    llm.enqueue(Status(401, message=f"Incorrect API key provided: {OPENAI_KEY}."))
    client = openai.AsyncOpenAI(api_key=llm.api_key, base_url=llm.base_url, max_retries=0)
    try:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError as error:
        assert OPENAI_KEY in str(error)
        return error
    finally:
        await client.close()
    raise AssertionError("the emulator did not refuse the request")


async def test_secrets_in_an_exception_and_its_cause_are_redacted_from_the_traceback(
    redacted_log: tuple[logging.Logger, io.StringIO], llm: OpenAIEmulator
) -> None:
    log, out = redacted_log
    sdk_error = await sdk_error_with_the_key_in_it(llm)
    try:
        try:
            raise sdk_error
        except openai.AuthenticationError as error:
            raise RuntimeError(f"could not answer with {BOT_TOKEN} / {SIGNING_SECRET}") from error
    except RuntimeError:
        log.exception("turn crashed")
    text = out.getvalue()
    assert leaked(text, SIGNING_SECRET) == []
    # Still a useful traceback: both exceptions, their types, where they came from.
    assert "Traceback (most recent call last)" in text
    assert (
        "openai.AuthenticationError: Error code: 401" in text
        and "Incorrect API key provided: [redacted]" in text
    )
    assert "RuntimeError: could not answer with [redacted] / [redacted]" in text


async def test_a_traceback_formatted_by_an_earlier_handler_is_still_redacted(llm: OpenAIEmulator) -> None:
    """Another handler (a crash reporter, caplog) may format the record first and cache its traceback."""
    earlier, redacted = io.StringIO(), io.StringIO()
    logger = logging.getLogger(f"tests.secrets.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(earlier))
    handler = logging.StreamHandler(redacted)
    handler.addFilter(RedactSecrets([]))
    logger.addHandler(handler)
    sdk_error = await sdk_error_with_the_key_in_it(llm)
    try:
        raise sdk_error
    except openai.AuthenticationError:
        logger.exception("llm call failed")
    assert OPENAI_KEY in earlier.getvalue()  # the unfiltered handler did cache the raw traceback
    assert "Incorrect API key provided: [redacted]" in redacted.getvalue()
    assert leaked(redacted.getvalue()) == []


async def test_settings_never_print_their_secrets_and_list_them_all(
    slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    socket = Settings.from_env(bot_env(slack, llm, "redis://127.0.0.1:1", "socket", 3000))
    http = Settings.from_env(bot_env(slack, llm, "redis://127.0.0.1:1", "http", 3000))
    assert leaked(repr(socket)) == [] and leaked(repr(http)) == []
    assert set(socket.secrets()) == {slack.bot_token, slack.app_token, llm.api_key}
    assert set(http.secrets()) == {slack.bot_token, slack.signing_secret, llm.api_key}


def test_the_session_log_goes_through_the_filter(session_log: Path) -> None:
    """The suite-wide scan is not vacuous: records reach the session's log file, redacted."""
    marker = uuid.uuid4().hex
    logging.getLogger("tests.secrets").warning("probe %s %s %s", marker, BOT_TOKEN, EMULATOR_SIGNING_SECRET)
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert f"probe {marker} [redacted] [redacted]" in session_log.read_text(encoding="utf-8")


# ----- what the running bot shows -----


async def test_health_shows_no_secret(bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{bot.url}/health") as response:
        body = await response.text()
        headers = json.dumps(dict(response.headers))
    assert response.status == 200 and json.loads(body)["mode"] == bot.mode
    assert leaked(body + headers) == []


@pytest.mark.parametrize(
    "failure, notice",
    [
        (Status(400, message=f"bad key {EMULATOR_KEY} in the request"), REJECTED),
        (
            Status(401, message=f"Incorrect API key provided: {EMULATOR_KEY}. Find yours at platform."),
            SETUP_PROBLEM,
        ),
        (Status(503, message=f"upstream refused {EMULATOR_KEY}"), UNAVAILABLE),
    ],
    ids=["400", "401", "503-after-retries"],
)
async def test_the_friendly_error_after_an_llm_failure_does_not_repeat_the_key(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    mode: str,
    failure: Status,
    notice: str,
) -> None:
    running = await start_bot(mode, LLM_MAX_RETRIES="1")
    llm.enqueue(failure, failure)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is my build red?")
    [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert reply["text"] == notice
    # Nothing the bot sent to Slack (messages, statuses, reactions) carries a secret.
    assert leaked(json.dumps([call.args for call in slack.calls], default=str)) == []


def loggers() -> dict[str, logging.Logger]:
    return {
        name: lg for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    }


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Puts the root handlers (pytest's, the session's) and every logger's level back afterwards,
    for a test that sets logging up the way app.py does."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: lg.level for name, lg in loggers().items()}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in loggers().items():
        lg.setLevel(levels.get(name, logging.NOTSET))


async def test_a_debug_log_of_a_turn_with_llm_and_auth_failures_holds_no_secret(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    mode: str,
    redis_url: str,
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As app.py does it, stderr being captured by capsys.
    settings = Settings.from_env(bot_env(slack, llm, redis_url, mode, 3000))
    configure_logging("DEBUG", settings.secrets())
    running = await start_bot(mode)

    # A 429 (its error body quoting the key), then an answer; the question itself pastes a token.
    llm.enqueue(
        Status(429, message=f"Rate limit reached for key {llm.api_key}", retry_after=0.05), Reply("ok")
    )
    first = await slack.post_user_message(CHANNEL, f"<@{BOT}> is {BOT_TOKEN} still valid?")
    await slack.wait_for_bot_messages(CHANNEL, first)
    # The model refuses the key.
    llm.enqueue(Status(401, message=f"Incorrect API key provided: {llm.api_key}"))
    second = await slack.post_user_message(CHANNEL, f"<@{BOT}> and now?")
    [refused] = await slack.wait_for_bot_messages(CHANNEL, second)
    # Slack refuses the bot token when the answer is shown (streamed, then posted whole).
    slack.fail_next("chat.startStream", "invalid_auth", times=10)
    slack.fail_next("chat.postMessage", "invalid_auth")
    third = await slack.post_user_message(CHANNEL, f"<@{BOT}> one more")
    [undelivered] = await slack.wait_for_bot_messages(CHANNEL, third)
    await running.settle()
    await running.bot.stop(grace_seconds=5)

    log = capsys.readouterr().err
    assert refused["text"] == SETUP_PROBLEM and undelivered["text"] == DELIVERY_FAILED
    # The log is the real thing: every step of the scenario is in it, at DEBUG.
    for expected in (
        "bot started",
        "llm retry",
        "error=http_429",
        "llm refused the bot's setup",
        "status=401 code=invalid_api_key: check OPENAI_API_KEY",
        "answer could not be delivered",
        "error=invalid_auth",
        " DEBUG bot.turn: turn text",
        "question='<@UBOT> is [redacted] still valid?'",
        "bot stopped",
    ):
        assert expected in log, expected
    assert leaked(log) == []


def test_slack_clients_skip_building_debug_lines(restore_logging: None) -> None:
    # slack_sdk formats every request and response for debug() when its logger's own level is
    # unset, whatever the effective level; the bot sets it, at INFO as at DEBUG.
    for level in ("INFO", "DEBUG"):
        configure_logging(level)
        assert AsyncWebClient(token="xoxb-test")._logger.level > logging.DEBUG


def test_a_socket_mode_connection_slack_keeps_refusing_is_one_line_a_minute(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """slack_sdk logs every failed attempt (one per ping interval) with its whole traceback: an
    operator whose Slack is unreachable saw 74 lines in 8 s."""
    configure_logging("INFO")
    app_logger = logging.getLogger("slack_bolt.AsyncApp")
    condense = next(f for f in app_logger.filters if isinstance(f, CondenseReconnectErrors))
    condense.every_seconds = 0.2

    def attempt() -> None:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
        except ConnectionRefusedError as error:
            app_logger.exception(f"Failed to connect (error: {error}); Retrying...")

    for _ in range(3):
        attempt()
    time.sleep(0.25)
    attempt()
    app_logger.info("A new session has been established")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "Failed to connect (error: [Errno 111] Connect call failed ('127.0.0.1', 9)); Retrying...",
        "Failed to connect (error: [Errno 111] Connect call failed ('127.0.0.1', 9)); Retrying... "
        "(2 more since the last)",
        "A new session has been established",
    ]
