"""The entry point as a real process: one clear line for a bad setting; serving and a clean stop."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.bot_process import BotProcess
from tests.conftest import bot_env, free_port
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator

APP = Path(__file__).resolve().parents[1] / "app.py"


async def run_app(env: dict[str, str], cwd: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(APP), *args, cwd=cwd, env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_missing_setting_stops_with_one_line(tmp_path: Path) -> None:
    process = await run_app({"SLACK_APP_TOKEN": "xapp-1"}, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: SLACK_BOT_TOKEN is not set")


@pytest.mark.parametrize("processes", ["1", "3"])
async def test_malformed_setting_in_dotenv_is_named(processes: str, tmp_path: Path) -> None:
    settings = ["SLACK_BOT_TOKEN=xoxb-1", "SLACK_APP_TOKEN=xapp-1", "PORT=eighty", f"PROCESSES={processes}"]
    (tmp_path / ".env").write_text("\n".join(settings) + "\n")
    process = await run_app({"OPENAI_API_KEY": "sk-test"}, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert stderr.decode().strip() == "error: PORT is malformed: expected a whole number, got 'eighty'."


@pytest.mark.parametrize("processes", ["1", "3"])
async def test_rejected_bot_token_stops_with_one_line(
    processes: str, tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str
) -> None:
    """Also with PROCESSES: the first process starts alone, so its error is said once."""
    env = bot_env(slack, llm, redis_url, "http", free_port()) | {"SLACK_BOT_TOKEN": "xoxb-revoked"}
    env["PROCESSES"] = processes
    process = await run_app(env, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert (
        stderr.decode().strip().startswith("error: SLACK_BOT_TOKEN was rejected by Slack (invalid_auth)")
    ), stderr.decode()
    assert len(stderr.decode().strip().splitlines()) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_rejected_app_token_stops_with_one_line(
    processes: str, tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str
) -> None:
    """Socket Mode's client would retry a rejected app-level token for ever, a traceback every few
    seconds, while the bot looked started."""
    env = bot_env(slack, llm, redis_url, "socket", free_port()) | {"SLACK_APP_TOKEN": "xapp-revoked"}
    env["PROCESSES"] = processes
    process = await run_app(env, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: SLACK_APP_TOKEN was rejected by Slack (invalid_auth)"
    )


async def test_a_key_the_model_service_refuses_stops_the_bot_with_one_line(
    tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str
) -> None:
    """Before, the bot started and answered every question with "the language model refused
    this request… try rephrasing", while /health said ok."""
    env = bot_env(slack, llm, redis_url, "http", free_port()) | {"OPENAI_API_KEY": "sk-revoked"}
    process = await run_app(env, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: OPENAI_API_KEY was refused by the language model service (HTTP 401, invalid_api_key)"
    ), lines
    assert "sk-revoked" not in stderr.decode()


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_a_start_up_check_answered_with_a_page_not_slacks_is_carried_past(
    mode: str, status: int, tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str
) -> None:
    """Something between the bot and Slack answers the token checks in plain text (200, or a
    proxy's 503). Before, slack_sdk's own check of a 200 raised AttributeError, and reading the
    error of a 503 did (`.get` on the text): the bot died at start with a traceback."""
    # A 503 is repeated twice by the bot's client: the third answer is the one read.
    page = {"status": status, "body": "ok", "body_type": "text/plain", "times": 1 if status == 200 else 3}
    slack.fail_next("auth.test", **page)
    if mode == "socket":
        slack.fail_next("apps.connections.open", **page)
    process = BotProcess(bot_env(slack, llm, redis_url, mode, free_port()), tmp_path)
    try:
        await process.start()
        if mode == "http":
            slack.use_http(f"{process.url}/slack/events")
        ts = await slack.post_user_message("C500", "<@UBOT> hello")
        [answer] = await slack.wait_for_bot_messages("C500", ts)
        assert answer["text"] == "Answer: ann: hello"
    finally:
        await process.close()
    log = process.log()
    assert f"auth.test failed error=http_{status}; carrying on" in log
    if mode == "socket":
        assert f"apps.connections.open failed error=http_{status}; carrying on" in log
    assert "Traceback" not in log and " ERROR " not in log, log


async def test_check_says_whether_the_settings_are_valid_and_exits(tmp_path: Path) -> None:
    valid = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s3cret", "OPENAI_API_KEY": "sk-test"}
    process = await run_app(valid | {"PROCESSES": "4"}, tmp_path, "--check")
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, stderr) == (0, b"")
    assert stdout.decode() == "settings are valid: HTTP mode, 4 processes, model gpt-4o-mini\n"

    process = await run_app(valid | {"PROCESSES": "none"}, tmp_path, "--check")
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, stdout) == (2, b"")
    assert stderr.decode() == (
        "error: PROCESSES is malformed: expected a whole number or 'auto', got 'none'.\n"
    )

    process = await run_app(valid, tmp_path, "--verbose")
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert stderr.decode().startswith("error: unknown arguments '--verbose'")


async def test_app_serves_answers_and_stops_cleanly_on_sigterm(
    tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str
) -> None:
    process = BotProcess(bot_env(slack, llm, redis_url, "http", free_port()), tmp_path)
    try:
        await process.start()
        slack.use_http(f"{process.url}/slack/events")
        ts = await slack.post_user_message("C500", "<@UBOT> hello from a real process")
        [answer] = await slack.wait_for_bot_messages("C500", ts)
        assert answer["text"] == "Answer: ann: hello from a real process"
        process.terminate()
        assert await process.wait() == 0, process.log()
    finally:
        await process.close()
    log = process.log()
    assert "outcome=answered" in log
    for secret in (slack.bot_token, slack.signing_secret, llm.api_key):
        assert secret not in log
    # A clean start and stop warns of nothing (Bolt's notice that its own SLACK_BOT_TOKEN
    # lookup is unused, given our client, is dropped).
    assert " WARNING " not in log and " ERROR " not in log, log
