"""Token counting uses the model's own tokenizer, from files shipped with the bot: no network, ever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from bot.tokens import (
    FALLBACK_ENCODING,
    UNKNOWN_MODEL_WINDOW,
    TokenCounter,
    default_window,
    encoding_name_for,
    model_window,
)

ROOT = Path(__file__).resolve().parents[1]


def test_known_models_use_their_encoding_and_ids_match_tiktokens_own() -> None:
    # The ids tiktoken's own test suite expects for "hello world".
    assert TokenCounter("gpt-4o-mini").encoding.encode("hello world") == [24912, 2375]
    assert TokenCounter("gpt-4").encoding.encode("hello world") == [15339, 1917]
    assert encoding_name_for("gpt-4o-2024-08-06") == "o200k_base"
    assert encoding_name_for("gpt-3.5-turbo") == "cl100k_base"


def test_unknown_models_fall_back_to_a_sensible_encoding_and_window() -> None:
    for model in ("Qwen/Qwen2.5-7B-Instruct", "llama3.1", "test-model"):
        counter = TokenCounter(model)
        assert counter.encoding_name == FALLBACK_ENCODING
        assert counter.count("the check api-prod returns 503") > 0
        assert model_window(model) is None
        assert default_window(model) == UNKNOWN_MODEL_WINDOW
    assert model_window("gpt-4o-mini") == 128_000
    assert default_window("gpt-4") == 8_192  # a window smaller than the cap is kept


def test_special_token_text_is_counted_as_text_and_truncation_fits() -> None:
    counter = TokenCounter("gpt-4o-mini")
    assert counter.count("<|endoftext|>") > 1
    long = "the invoice for account ACME-42 is wrong " * 200
    cut = counter.truncate(long, 50)
    assert counter.count(cut) <= 50 and cut.endswith("[…]")
    assert counter.truncate("short", 50) == "short"


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    socket.socket.connect = no_network
    socket.socket.connect_ex = no_network
    socket.create_connection = no_network
    socket.getaddrinfo = no_network

    import tiktoken
    try:
        tiktoken.get_encoding("cl100k_base")  # plain tiktoken wants to download its file
        plain = "loaded"
    except Exception as error:
        plain = type(error).__name__

    from bot.tokens import TokenCounter

    print(json.dumps({
        "plain_tiktoken": plain,
        "o200k": TokenCounter("gpt-4o-mini").encoding.encode("hello world"),
        "cl100k": TokenCounter("gpt-4").encoding.encode("hello world"),
        "fallback": TokenCounter("some-local-model").count("error E1234 on check api-prod"),
    }))
    """
)


def test_counting_works_with_the_network_unavailable_and_an_empty_cache(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    dead = f"http://127.0.0.1:{_dead_port()}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "TIKTOKEN_CACHE_DIR": str(cache),  # empty: nothing cached from an earlier run
        "DATA_GYM_CACHE_DIR": str(cache),
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "https_proxy": dead,
        "NO_PROXY": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["plain_tiktoken"] != "loaded"  # the network really was unavailable
    assert found["o200k"] == [24912, 2375]
    assert found["cl100k"] == [15339, 1917]
    assert found["fallback"] > 0
    assert list(cache.iterdir()) == []  # and nothing was written to a cache
