"""Log set-up: one line per record, and a filter that keeps secrets out of every line."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Iterable

# Slack tokens, OpenAI-style keys, and bearer headers, whatever produced them.
_SECRET_PATTERNS = re.compile(
    r"(xox[abposr]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|sk-[A-Za-z0-9_-]{6,}|Bearer\s+[^\s'\"]+)"
)
REDACTED = "[redacted]"
# slack_sdk's Web API clients test their logger's own level (`logger.level <= DEBUG`), not the
# effective one, before building their debug lines; left unset (0), every call formats its request
# and response for a debug() that then drops them: about 30 µs a call.
_SDK_CLIENTS = ("slack_sdk.web.async_base_client", "slack_sdk.web.base_client")


class RedactSecrets(logging.Filter):
    """Replaces configured secrets and anything shaped like a token in the formatted record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _SECRET_PATTERNS.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class DropBoltTokenNotice(logging.Filter):
    """Bolt warns "As you gave `client` as well, `token` will be unused." whenever SLACK_BOT_TOKEN
    is in the environment (it reads it itself) and a client is given, as the bot gives one by
    design: a warning at every start that asks nothing of the operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


class CondenseReconnectErrors(logging.Filter):
    """The Socket Mode client logs each failed connection attempt (one every ping interval while
    Slack cannot be reached) with a whole traceback: one line each, at most one a minute, says it
    as well, and /health says 503 meanwhile."""

    def __init__(self, every_seconds: float = 60.0) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self._last = -math.inf
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Failed to connect"):
            return True
        now = time.monotonic()
        if now - self._last < self.every_seconds:
            self._held += 1
            return False
        record.exc_info, record.exc_text = None, None
        if self._held:
            record.msg, record.args = f"{record.getMessage()} ({self._held} more since the last)", None
        self._last, self._held = now, 0
        return True


def configure_logging(level: str, secrets: Iterable[str] = (), *, source: str = "") -> None:
    """`source` names the process in every line when several share the output (PROCESSES)."""
    handler = logging.StreamHandler(sys.stderr)
    source = f"{source} " if source else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {source}%(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries log request details at DEBUG; keep them at INFO or above.
    library_level = max(logging.INFO, logging.getLevelName(level))
    bolt_app = logging.getLogger("slack_bolt.AsyncApp")
    if not any(isinstance(f, DropBoltTokenNotice) for f in bolt_app.filters):
        bolt_app.addFilter(DropBoltTokenNotice())
    if not any(isinstance(f, CondenseReconnectErrors) for f in bolt_app.filters):
        bolt_app.addFilter(CondenseReconnectErrors())
    for noisy in ("slack_sdk", "slack_bolt", "openai", "httpx", "httpx2", "aiohttp.access", *_SDK_CLIENTS):
        logging.getLogger(noisy).setLevel(library_level)
