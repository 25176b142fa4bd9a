"""Settings are validated once at start-up; a bad one stops the bot with one line naming it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection
from redis.crc import key_slot

from bot.config import DEFAULT_SYSTEM_PROMPT, ConfigError, Settings
from bot.redis_url import (
    CLUSTER_KEY_PREFIX,
    ClusterSlotConnection,
    ClusterSlotSSLConnection,
    connection_pool,
    parse_cluster_url,
    parse_sentinel_url,
)
from bot.supervisor import process_count, usable_cores, usable_memory

BASE = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_APP_TOKEN": "xapp-1-abc", "OPENAI_API_KEY": "sk-abc"}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.socket_mode
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.openai_model == "gpt-4o-mini"
    assert settings.port == 3000
    assert settings.conversation_ttl_days == 30
    assert settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings.redis_url is None
    assert (settings.llm_first_token_timeout_seconds, settings.llm_idle_timeout_seconds) == (60, 30)
    assert settings.slack_rate_limit_scale == 1
    assert settings.max_context_tokens == 32_000  # gpt-4o-mini's 128k window, capped
    assert settings.max_answer_tokens == 2048


def test_token_budget_follows_the_model_and_can_be_set() -> None:
    assert Settings.from_env(BASE | {"OPENAI_MODEL": "gpt-4"}).max_context_tokens == 8192
    unknown = Settings.from_env(BASE | {"OPENAI_MODEL": "llama3.1"})
    assert (unknown.max_context_tokens, unknown.max_answer_tokens) == (8192, 2048)
    chosen = Settings.from_env(
        BASE | {"OPENAI_MODEL": "llama3.1", "MAX_CONTEXT_TOKENS": "4000", "MAX_ANSWER_TOKENS": "500"}
    )
    assert (chosen.max_context_tokens, chosen.max_answer_tokens) == (4000, 500)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_BOT_TOKEN": "xapp-wrong-kind"}, "SLACK_BOT_TOKEN is malformed"),
        ({"SLACK_APP_TOKEN": "xoxb-wrong-kind"}, "SLACK_APP_TOKEN is malformed"),
        ({"SLACK_APP_TOKEN": ""}, "SLACK_SIGNING_SECRET is not set"),
        ({"OPENAI_API_KEY": ""}, "OPENAI_API_KEY is not set"),
        ({"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "https://api.openai.com/v1"}, "OPENAI_API_KEY is not set"),
        ({"OPENAI_BASE_URL": "localhost:8000"}, "OPENAI_BASE_URL is malformed"),
        ({"SLACK_API_URL": "ftp://slack"}, "SLACK_API_URL is malformed"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL is malformed"),
        ({"REDIS_URL": "redis://localhost:abc"}, "REDIS_URL is malformed: its port is not a number"),
        ({"REDIS_URL": "redis://localhost:6379/abc"}, "REDIS_URL is malformed: its database, '/abc', is not"),
        ({"REDIS_URL": "redis://:secret@/0"}, "REDIS_URL is malformed: it names no host"),
        ({"PORT": "http"}, "PORT is malformed"),
        ({"PORT": "70000"}, "PORT is out of range"),
        ({"PROCESSES": "two"}, "PROCESSES is malformed"),
        ({"PROCESSES": "0"}, "PROCESSES is out of range"),
        ({"PROCESSES": "65", "SLACK_APP_TOKEN": "", "SLACK_SIGNING_SECRET": "s"}, "PROCESSES is out of"),
        ({"PROCESSES": "11"}, "Socket Mode allows at most 10 connections"),
        ({"HTTP_REQUESTS_PER_CONNECTION": "many"}, "HTTP_REQUESTS_PER_CONNECTION is malformed"),
        ({"HTTP_REQUESTS_PER_CONNECTION": "-1"}, "HTTP_REQUESTS_PER_CONNECTION is out of range"),
        ({"CONVERSATION_TTL_DAYS": "-1"}, "CONVERSATION_TTL_DAYS is out of range"),
        ({"CONVERSATION_TTL_DAYS": "nan"}, "CONVERSATION_TTL_DAYS is malformed: expected a finite number"),
        ({"CONVERSATION_TTL_DAYS": "1e300"}, "CONVERSATION_TTL_DAYS is out of range"),
        ({"THREAD_LOCK_TTL_SECONDS": "inf"}, "THREAD_LOCK_TTL_SECONDS is malformed: expected a finite"),
        ({"SLACK_RATE_LIMIT_SCALE": "NaN"}, "SLACK_RATE_LIMIT_SCALE is malformed: expected a finite"),
        ({"LLM_TIMEOUT_SECONDS": "-inf"}, "LLM_TIMEOUT_SECONDS is malformed: expected a finite number"),
        ({"LLM_MAX_RETRIES": "2.5"}, "LLM_MAX_RETRIES is malformed"),
        ({"LLM_FIRST_TOKEN_TIMEOUT_SECONDS": "0"}, "LLM_FIRST_TOKEN_TIMEOUT_SECONDS is out of range"),
        ({"LLM_IDLE_TIMEOUT_SECONDS": "soon"}, "LLM_IDLE_TIMEOUT_SECONDS is malformed"),
        ({"SLACK_RATE_LIMIT_SCALE": "1000"}, "SLACK_RATE_LIMIT_SCALE is out of range"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL is malformed"),
        ({"SYSTEM_PROMPT_FILE": "/nonexistent/prompt.txt"}, "SYSTEM_PROMPT_FILE cannot be read"),
        ({"SYSTEM_PROMPT": "a", "SYSTEM_PROMPT_FILE": "b"}, "both set"),
        ({"MAX_CONTEXT_TOKENS": "lots"}, "MAX_CONTEXT_TOKENS is malformed"),
        ({"MAX_CONTEXT_TOKENS": "100"}, "MAX_CONTEXT_TOKENS is out of range"),
        ({"MAX_CONTEXT_TOKENS": "4000", "MAX_ANSWER_TOKENS": "3000"}, "MAX_ANSWER_TOKENS is out of range"),
        ({"MAX_CONTEXT_TOKENS": "2000", "SYSTEM_PROMPT": "Be kind. " * 400}, "too little room"),
    ],
)
def test_bad_settings_are_named(change: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(BASE | change)
    assert named in str(error.value)
    assert "\n" not in str(error.value)


def test_processes_default_to_one_and_auto_is_one_per_usable_core() -> None:
    http = BASE | {"SLACK_APP_TOKEN": "", "SLACK_SIGNING_SECRET": "s"}
    cores = len(os.sched_getaffinity(0))
    assert Settings.from_env(BASE).processes == 1
    assert Settings.from_env(http | {"PROCESSES": "12"}).processes == 12
    assert Settings.from_env(http | {"PROCESSES": "auto"}).processes == cores
    assert Settings.from_env(BASE | {"PROCESSES": "auto"}).processes == min(cores, 10)


def test_a_connection_carries_100_requests_by_default_and_0_keeps_it_as_long_as_the_client_does() -> None:
    assert Settings.from_env(BASE).http_requests_per_connection == 100
    assert Settings.from_env(BASE | {"HTTP_REQUESTS_PER_CONNECTION": "0"}).http_requests_per_connection == 0


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one process
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({}, None),  # no cgroup files
    ],
)
def test_auto_processes_keep_within_a_containers_cpu_quota(
    files: dict[str, str], quota: int | None, tmp_path: Path
) -> None:
    """A container limited to some CPUs on a bigger host sees all the host's cores; `auto` must
    not start a process for each of them."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (cores if quota is None else min(cores, quota))


MB = 2**20


@pytest.mark.parametrize(
    ("files", "memory", "processes"),
    [
        ({}, 24 * 1024 * MB, "cores"),  # no cgroup files: the machine's memory
        ({"memory.max": "max\n"}, 24 * 1024 * MB, "cores"),  # cgroup v2, no limit
        ({"memory.max": "314572800\n"}, 300 * MB, 1),  # 300 MB: room for one process
        ({"memory.max": "1073741824\n"}, 1024 * MB, "cores"),  # 1 GB: six would fit
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 24 * 1024 * MB, "cores"),  # v1, none
        ({"memory/memory.limit_in_bytes": "104857600\n"}, 100 * MB, 1),  # too little even for one
    ],
)
def test_auto_processes_keep_within_a_containers_memory(
    files: dict[str, str], memory: int, processes: int | str, tmp_path: Path
) -> None:
    """A container limited to 512 MB may see a host's 8 cores (a Heroku-style dyno); `auto` must
    start no more processes than its memory holds (160 MB each, after the supervisor's 25)."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:         1000000 kB\n")
    assert usable_memory(tmp_path, meminfo) == memory
    fit = (memory - 25 * MB) // (160 * MB)
    expected = min(len(os.sched_getaffinity(0)), fit, 64) if processes == "cores" else processes
    assert process_count("auto", socket_mode=False, cgroup_root=tmp_path, meminfo=meminfo) == expected
    assert process_count("3", socket_mode=False, cgroup_root=tmp_path, meminfo=meminfo) == 3  # as asked


def test_http_mode_and_a_compatible_server_without_key(tmp_path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Be brief.\n")
    settings = Settings.from_env(
        {
            "SLACK_BOT_TOKEN": "xoxb-1",
            "SLACK_SIGNING_SECRET": "s3cret",
            "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
            "SLACK_API_URL": "https://slack-gov.com/api",
            "SYSTEM_PROMPT_FILE": str(prompt),
        }
    )
    assert not settings.socket_mode
    assert settings.slack_api_url == "https://slack-gov.com/api/"
    assert settings.system_prompt == "Be brief."


def test_secrets_are_not_in_the_settings_repr() -> None:
    settings = Settings.from_env(BASE | {"SLACK_SIGNING_SECRET": "signing-s3cret"})
    for secret in ("xoxb-1-2-abc", "xapp-1-abc", "sk-abc", "signing-s3cret"):
        assert secret not in repr(settings)
        assert secret in settings.secrets()


def test_every_setting_is_documented_in_the_readme_and_env_example() -> None:
    root = Path(__file__).resolve().parents[1]
    source = (root / "bot" / "config.py").read_text()
    names = set(re.findall(r'"([A-Z][A-Z0-9_]{3,})"', source)) - {"DEBUG", "INFO", "WARNING", "ERROR"}
    assert len(names) > 20  # the pattern still finds the settings
    readme, example = (root / "README.md").read_text(), (root / ".env.example").read_text()
    assert sorted(n for n in names if f"`{n}`" not in readme) == []
    assert sorted(n for n in names if n not in example) == []


def test_redis_sentinel_url_is_read_with_its_sentinels_service_and_passwords() -> None:
    url = "redis+sentinel://:pa%40ssword@s1.internal,s2.internal:26380,[::1]:26381/support-bot/2?sentinel_password=sentinel-pw"
    settings = Settings.from_env(BASE | {"REDIS_URL": url})
    assert settings.redis_url == url
    where = parse_sentinel_url(url)
    assert where.sentinels == [("s1.internal", 26379), ("s2.internal", 26380), ("::1", 26381)]
    assert (where.service, where.db, where.tls) == ("support-bot", 2, False)
    assert (where.username, where.password, where.sentinel_password) == (None, "pa@ssword", "sentinel-pw")
    assert {"pa@ssword", "sentinel-pw"} <= set(settings.secrets())
    assert parse_sentinel_url("rediss+sentinel://user:pw@s1/main").tls


def test_a_plus_in_a_sentinel_password_is_a_plus_as_in_the_redis_password() -> None:
    where = parse_sentinel_url("redis+sentinel://:a+b@s1/main?sentinel_password=c+d%2Be%20f")
    assert (where.password, where.sentinel_password) == ("a+b", "c+d+e f")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:hunter22@s1:26379", "needs the service name"),
        ("redis+sentinel://:hunter22@s1:port/mymaster", "host:port pairs"),
        ("redis+sentinel://:hunter22@s1,,s2/mymaster", "host:port pairs"),
        ("redis+sentinel://:hunter22@s1/mymaster/zero", "must be a number"),
        ("redis+sentinel://:hunter22@s1/mymaster?sentinel_pass=x", "unknown option"),
    ],
)
def test_a_malformed_sentinel_url_is_named_without_its_password(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(BASE | {"REDIS_URL": url})
    assert "REDIS_URL is malformed" in str(error.value) and reason in str(error.value)
    assert "hunter22" not in str(error.value)


def test_redis_cluster_url_is_read_with_its_nodes_and_password() -> None:
    url = "redis+cluster://bot:cl%40ster-pw@n1.internal,n2.internal:7001,[::1]:7002"
    settings = Settings.from_env(BASE | {"REDIS_URL": url})
    assert settings.redis_url == url
    where = parse_cluster_url(url)
    assert where.nodes == [("n1.internal", 6379), ("n2.internal", 7001), ("::1", 7002)]
    assert (where.username, where.password, where.tls) == ("bot", "cl@ster-pw", False)
    assert "cl@ster-pw" in settings.secrets()
    assert parse_cluster_url("rediss+cluster://n1:7000/").tls


def test_a_cluster_url_gives_connections_to_its_slot_with_tls_when_asked() -> None:
    plain, _ = connection_pool("redis+cluster://n1:7000,n2", decode_responses=True)
    tls, _ = connection_pool("rediss+cluster://n1:7000", decode_responses=True)
    assert plain.connection_class is ClusterSlotConnection
    assert tls.connection_class is ClusterSlotSSLConnection
    connection = tls.make_connection()
    assert isinstance(connection, SSLConnection) and connection.cluster.nodes == [("n1", 7000)]
    assert connection.cluster.slot == key_slot(CLUSTER_KEY_PREFIX.encode())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+cluster://:hunter22@n1:7000/2", "no database or options"),
        ("redis+cluster://:hunter22@n1:7000?timeout=1", "no database or options"),
        ("redis+cluster://:hunter22@n1:port", "host:port pairs"),
        ("redis+cluster://:hunter22@n1,,n2", "host:port pairs"),
    ],
)
def test_a_malformed_cluster_url_is_named_without_its_password(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(BASE | {"REDIS_URL": url})
    assert "REDIS_URL is malformed" in str(error.value) and reason in str(error.value)
    assert "hunter22" not in str(error.value)


def test_the_redis_password_is_a_secret() -> None:
    settings = Settings.from_env(BASE | {"REDIS_URL": "rediss://default:r3dis-pw@cache.internal:6380/0"})
    assert "r3dis-pw" in settings.secrets()
