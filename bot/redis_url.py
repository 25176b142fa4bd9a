"""REDIS_URL: one Redis endpoint (`redis://`, `rediss://`, `unix://`), or the Sentinels that know
which Redis is the primary (`redis+sentinel://`, `rediss+sentinel://`), turned into a connection
pool.

redis-py has no URL form for Sentinel, so the bot reads its own, shaped like redis-py's:

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=…]

The hosts are the Sentinels (port 26379 unless given), `service` the name they monitor the
primary by (`sentinel monitor <service> …`). The user name and password are the Redis primary's;
Sentinels that ask for a password of their own take `sentinel_password`. `rediss+sentinel://`
speaks TLS to the Sentinels and to Redis. Each new connection asks a Sentinel for the primary, so
after a failover the bot's next connection reaches the new one by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis.asyncio as redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme: TLS
SENTINEL_PORT = 26379
URL_FORMS = (
    "expected redis://host:port/db, rediss://…, unix:///path/to/socket or "
    "redis+sentinel://host:port[,host:port…]/service[/db]"
)


class RedisUrlError(ValueError):
    """REDIS_URL is malformed; the message says how (and never repeats the URL's password)."""


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The primary's pool, which waits for a free connection as the bot's plain pool does."""


def check_redis_url(value: str) -> str | None:
    """What is wrong with a REDIS_URL, or None."""
    scheme = urlparse(value).scheme
    if scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(value)
        except RedisUrlError as error:
            return str(error)
        return None
    if scheme not in ("redis", "rediss", "unix"):
        return URL_FORMS
    return None


def url_passwords(url: str) -> list[str]:
    """The passwords in a REDIS_URL (checked already), which must never reach a log."""
    if urlparse(url).scheme in SENTINEL_SCHEMES:
        where = parse_sentinel_url(url)
        return [p for p in (where.password, where.sentinel_password) if p]
    password = urlparse(url).password
    return [unquote(password)] if password else []


def parse_sentinel_url(url: str) -> SentinelUrl:
    scheme, rest = url.split("://", 1)
    if scheme not in SENTINEL_SCHEMES:
        raise RedisUrlError(URL_FORMS)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if userinfo else (None, None)
    sentinels = [_host_and_port(part) for part in hosts.split(",")]
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise RedisUrlError("a Sentinel URL needs the service name after the hosts: …/mymaster")
    if db and not db.isdigit():
        raise RedisUrlError(f"the database after the service name must be a number, got {db!r}")
    options = parse_qs(query)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise RedisUrlError(f"unknown option in a Sentinel URL: {', '.join(sorted(unknown))}")
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(service),
        db=int(db or 0),
        tls=SENTINEL_SCHEMES[scheme],
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password", [None])[-1],
    )


def connection_pool(url: str, **options: Any) -> tuple[redis.ConnectionPool, Sentinel | None]:
    """A pool that waits for a free connection, and the Sentinel client behind it if any (the
    caller closes it). `options` are the connections' settings (timeouts, retries, protocol)."""
    if urlparse(url).scheme not in SENTINEL_SCHEMES:
        return redis.BlockingConnectionPool.from_url(url, **options), None
    where = parse_sentinel_url(url)
    # The Sentinels get the connections' timeouts and protocol, and their own password.
    sentinel_options = {
        key: value
        for key, value in options.items()
        if key.startswith("socket_") or key in ("protocol", "maint_notifications_config")
    }
    sentinel = Sentinel(
        where.sentinels,
        sentinel_kwargs={**sentinel_options, "password": where.sentinel_password, "ssl": where.tls},
    )
    pool = BlockingSentinelPool(
        where.service,
        sentinel,
        is_master=True,
        ssl=where.tls,
        db=where.db,
        username=where.username,
        password=where.password,
        **options,
    )
    return pool, sentinel


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    username, colon, password = userinfo.partition(":")
    return (unquote(username) or None), (unquote(password) if colon else None)


def _host_and_port(part: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6 address]:port`."""
    host, port = part, ""
    if part.startswith("["):
        host, _, after = part[1:].partition("]")
        port = after.removeprefix(":")
    elif part.count(":") == 1:
        host, port = part.split(":")
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise RedisUrlError(f"a Sentinel URL lists host:port pairs separated by commas, got {part!r}")
    return host, int(port or SENTINEL_PORT)
