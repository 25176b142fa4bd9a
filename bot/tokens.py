"""Counting tokens the way the model does, offline: tiktoken's BPE over encoding files shipped in
bot/encodings/ (tiktoken itself would download them at run time)."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken

if TYPE_CHECKING:  # the OpenAI SDK is slow to import, and the admin command line needs none of it
    from bot.llm import ChatMessage

log = logging.getLogger(__name__)

ENCODINGS_DIR = Path(__file__).resolve().parent / "encodings"

# Models tiktoken does not know (self-hosted ones, new names) are counted with the newest
# OpenAI encoding: close enough for a budget that keeps headroom, and never a crash.
FALLBACK_ENCODING = "o200k_base"
# The window assumed for a model we do not know; MAX_CONTEXT_TOKENS overrides it.
UNKNOWN_MODEL_WINDOW = 8_192
# Sending a whole 128k window on every turn of a long thread is slow and costly; the rolling
# summary carries what is older. MAX_CONTEXT_TOKENS can raise this.
DEFAULT_WINDOW_CAP = 32_000

# What the chat format adds around each message's content, and before the answer (OpenAI's
# published way of counting chat tokens, rounded up).
PER_MESSAGE = 4
REPLY_PRIMING = 3
COUNT_MEMORY = 20_000  # token counts remembered per process (a few MB), then forgotten at once

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True)
class _EncodingFile:
    """An encoding as tiktoken defines it (tiktoken_ext/openai_public.py), with the SHA-256 it pins
    for the rank file, which is checked here too."""

    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


_ENCODINGS: dict[str, _EncodingFile] = {
    "cl100k_base": _EncodingFile(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": _EncodingFile(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

# Context windows by model-name prefix; the longest matching prefix wins.
_WINDOWS: dict[str, int] = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4": 200_000,
}


class EncodingFileError(Exception):
    """A shipped encoding file is missing or not the one tiktoken pins (a broken install)."""


def model_window(model: str) -> int | None:
    """The model's context window in tokens, when the bot knows the model."""
    name = model.rsplit("/", 1)[-1].lower()
    matches = [prefix for prefix in _WINDOWS if name.startswith(prefix)]
    return _WINDOWS[max(matches, key=len)] if matches else None


def default_window(model: str) -> int:
    """The prompt-plus-answer budget used when MAX_CONTEXT_TOKENS is unset."""
    known = model_window(model)
    return UNKNOWN_MODEL_WINDOW if known is None else min(known, DEFAULT_WINDOW_CAP)


def encoding_name_for(model: str) -> str:
    """The encoding of an OpenAI model (tiktoken's own table), else the fallback."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return FALLBACK_ENCODING
    return name if name in _ENCODINGS else FALLBACK_ENCODING


@functools.cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """Build a tiktoken encoding from its shipped rank file; never touches the network."""
    spec = _ENCODINGS[name]
    path = ENCODINGS_DIR / f"{name}.tiktoken.gz"
    try:
        contents = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise EncodingFileError(f"cannot read the token encoding file {path}: {error}") from None
    if hashlib.sha256(contents).hexdigest() != spec.sha256:
        raise EncodingFileError(f"the token encoding file {path} is not the published {name}")
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    encoding = tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=spec.special_tokens
    )
    # The BPE core keeps its own copy of the ranks; tiktoken keeps the Python dict only for
    # pickling, which the bot never does. Dropping it saves ~30 MB per process.
    encoding._mergeable_ranks = {}
    return encoding


class TokenCounter:
    """Counts the tokens of text and chat messages for one model."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.encoding_name = encoding_name_for(model)
        self.encoding = load_encoding(self.encoding_name)
        self._counts: dict[int, int] = {}
        if self.encoding_name == FALLBACK_ENCODING and model_window(model) is None:
            log.info("unknown model %s: counting tokens with %s", model, self.encoding_name)

    def count(self, text: str) -> int:
        # Every turn recounts the system prompt and the recent turns it sends: remembered by the
        # text's hash (64 bits; a clash would misjudge one count, not break anything).
        key = hash(text)
        known = self._counts.get(key)
        if known is None:
            # encode_ordinary: a user typing "<|endoftext|>" is text, not a special token.
            known = len(self.encoding.encode_ordinary(text))
            if len(self._counts) >= COUNT_MEMORY:
                self._counts.clear()
            self._counts[key] = known
        return known

    def count_message(self, message: ChatMessage) -> int:
        return PER_MESSAGE + self.count(message["content"])

    def count_messages(self, messages: list[ChatMessage]) -> int:
        """Tokens of a whole request's messages, including the priming of the reply."""
        return REPLY_PRIMING + sum(self.count_message(m) for m in messages)

    def truncate(self, text: str, max_tokens: int, marker: str = " […]") -> str:
        """The start of `text` cut to at most `max_tokens` tokens, marked as cut when it was."""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        keep = max(0, max_tokens - self.count(marker))
        return self.encoding.decode(tokens[:keep]) + marker


@dataclass(frozen=True)
class TokenBudget:
    """How one request's window is shared: the answer's reserve, the system prompt, the rolling
    summary of older turns, and as many recent turns as fit in the rest."""

    window: int  # MAX_CONTEXT_TOKENS: prompt and answer together
    answer: int  # MAX_ANSWER_TOKENS: reserved for the answer

    # The headings around the summary and the line naming who asks.
    HEADINGS = 64
    # Least room left for the turns; the current question is cut to fit it if need be.
    MIN_TURN_ROOM = 256

    @property
    def prompt(self) -> int:
        """What the messages sent may take, all counted."""
        return self.window - self.answer

    @property
    def summary(self) -> int:
        """The longest rolling summary: an eighth of the prompt, within sensible bounds."""
        return max(64, min(1024, self.prompt // 8))

    def turn_room(self, system_prompt_tokens: int) -> int:
        """Tokens left for turns once the system prompt and a full-size summary are in."""
        return self.prompt - REPLY_PRIMING - PER_MESSAGE - system_prompt_tokens - self.HEADINGS - self.summary
