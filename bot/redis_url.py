"""REDIS_URL: one Redis endpoint (`redis://`, `rediss://`, `unix://`), the Sentinels that know
which Redis is the primary (`redis+sentinel://`, `rediss+sentinel://`), or nodes of a Redis Cluster
(`redis+cluster://`, `rediss+cluster://`), turned into a connection pool.

redis-py has no URL form for Sentinel, so the bot reads its own, shaped like redis-py's:

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=…]

The hosts are the Sentinels (port 26379 unless given), `service` the name they monitor the
primary by (`sentinel monitor <service> …`). The user name and password are the Redis primary's;
Sentinels that ask for a password of their own take `sentinel_password`. `rediss+sentinel://`
speaks TLS to the Sentinels and to Redis. Each new connection asks a Sentinel for the primary, so
after a failover the bot's next connection reaches the new one by itself.

A Redis Cluster is given by any of its nodes (port 6379 unless given):

    redis+cluster://[[username]:password@]host[:port][,host[:port]...]

In a cluster every key of the bot starts with one hash tag (`key_prefix`: `{support-bot}:`, or
`{name}:` with REDIS_KEY_PREFIX=name), so all of them live in one hash slot and the bot's Lua
scripts may touch several at once. Its connections go to
whichever primary serves that slot now: they ask the listed nodes (CLUSTER SLOTS) when they open,
and a node that answers MOVED (a failover, or the slot moved to another shard) sends them on to
the new one. A cluster gives the bot failover, not room: one shard holds all of its data.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis.asyncio as redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError, ResponseError

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme: TLS
SENTINEL_PORT = 26379
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
CLUSTER_PORT = 6379
# The hash tag of every key in a cluster unless REDIS_KEY_PREFIX names another: one slot, so
# that a script may touch any of them.
CLUSTER_KEY_PREFIX = "{support-bot}:"
_KEY_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PROBE_TIMEOUT_SECONDS = 2.0  # one node's answer to CLUSTER SLOTS
URL_FORMS = (
    "expected redis://host:port/db, rediss://…, unix:///path/to/socket, "
    "redis+sentinel://host:port[,host:port…]/service[/db] or redis+cluster://host:port[,host:port…]"
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


@dataclass(frozen=True)
class ClusterUrl:
    nodes: list[tuple[str, int]]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The primary's pool, which waits for a free connection as the bot's plain pool does."""


@dataclass
class ClusterSlot:
    """One hash slot of a cluster, the nodes to ask where it is, and where it was last seen;
    shared by every connection of a pool."""

    slot: int
    nodes: list[tuple[str, int]]
    owner: tuple[str, int] | None = None


class ClusterSlotConnection(Connection):
    """A connection to the primary that serves one hash slot of a Redis Cluster now."""

    probe_class: type[Connection] = Connection

    def __init__(self, *, cluster: ClusterSlot, **kwargs: Any) -> None:
        self.cluster = cluster
        # The probes ask each node once: the connection's own retries go round the nodes again.
        self._probe_kwargs = {**kwargs, "retry": Retry(NoBackoff(), 0)}
        host, port = cluster.owner or cluster.nodes[0]
        super().__init__(host=host, port=port, **kwargs)

    async def _connect(self) -> None:
        if self.cluster.owner is not None:
            self.host, self.port = self.cluster.owner
            try:
                return await super()._connect()
            except OSError:
                self.cluster.owner = None  # gone with a failover, most likely: ask again
        self.host, self.port = self.cluster.owner = await self._find_owner()
        await super()._connect()

    async def _find_owner(self) -> tuple[str, int]:
        """Ask the listed nodes, in turn, which primary serves the slot (CLUSTER SLOTS)."""
        problems = []
        for host, port in self.cluster.nodes:
            probe = self.probe_class(host=host, port=port, **self._probe_kwargs)
            try:
                async with asyncio.timeout(probe.socket_connect_timeout or PROBE_TIMEOUT_SECONDS):
                    await probe.connect()
                    await probe.send_command("CLUSTER", "SLOTS")
                    ranges = await probe.read_response()
            except ResponseError as error:  # Redis's own words ("cluster support disabled")
                problems.append(f"{host}:{port}: {error}")
                continue
            except (RedisError, OSError, TimeoutError) as error:
                problems.append(f"{host}:{port}: {type(error).__name__}")
                continue
            finally:
                await probe.disconnect()
            for start, end, primary, *_ in ranges:
                if int(start) <= self.cluster.slot <= int(end):
                    # An empty address means "the node you asked" (CLUSTER SLOTS's convention).
                    return (_text(primary[0]) or host), int(primary[1])
            problems.append(f"{host}:{port}: no primary serves the slot")
        raise RedisConnectionError(
            f"no cluster node said where slot {self.cluster.slot} is: {'; '.join(problems)}"
        )

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except MovedError as moved:
            # The slot has a new primary (a failover): this connection's next opening goes there.
            # The caller retries on MovedError after closing the connection, or reroutes.
            self.cluster.owner = (moved.host or self.host, moved.port)
            raise


class ClusterSlotSSLConnection(ClusterSlotConnection, SSLConnection):
    probe_class = SSLConnection


def check_redis_url(value: str) -> str | None:
    """What is wrong with a REDIS_URL, or None."""
    scheme = urlparse(value).scheme
    if scheme in SENTINEL_SCHEMES or scheme in CLUSTER_SCHEMES:
        try:
            parse_sentinel_url(value) if scheme in SENTINEL_SCHEMES else parse_cluster_url(value)
        except RedisUrlError as error:
            return str(error)
        return None
    if scheme not in ("redis", "rediss", "unix"):
        return URL_FORMS
    return _plain_url_problem(value) if scheme != "unix" else None


def _plain_url_problem(value: str) -> str | None:
    """What redis-py would not read as meant in a redis:// or rediss:// URL: a port that is no
    number (it raises when connecting), a database that is no number (it quietly uses 0), no host
    (it quietly uses localhost)."""
    parsed = urlparse(value)
    try:
        _ = parsed.port  # raises when it is not a number
    except ValueError:
        return f"its port is not a number between 0 and 65535 ({URL_FORMS})"
    if not parsed.hostname:
        return f"it names no host ({URL_FORMS})"
    if parsed.path not in ("", "/") and not re.fullmatch(r"/\d+/?", parsed.path):
        return f"its database, {parsed.path!r}, is not a number ({URL_FORMS})"
    return None


def url_passwords(url: str) -> list[str]:
    """The passwords in a REDIS_URL (checked already), which must never reach a log."""
    if urlparse(url).scheme in SENTINEL_SCHEMES:
        where = parse_sentinel_url(url)
        return [p for p in (where.password, where.sentinel_password) if p]
    if urlparse(url).scheme in CLUSTER_SCHEMES:
        password = parse_cluster_url(url).password
        return [password] if password else []
    password = urlparse(url).password
    return [unquote(password)] if password else []


def is_cluster_url(url: str) -> bool:
    return urlparse(url).scheme in CLUSTER_SCHEMES


def key_prefix(url: str, name: str | None = None) -> str:
    """What every key of the bot starts with in the Redis that `url` names, given REDIS_KEY_PREFIX
    (`name`): `name:`, or nothing when unset; in a cluster, `{name}:`, a hash tag, by default
    `{support-bot}:`."""
    if is_cluster_url(url):
        return f"{{{name}}}:" if name else CLUSTER_KEY_PREFIX
    return f"{name}:" if name else ""


def check_key_prefix(value: str) -> str | None:
    """What is wrong with a REDIS_KEY_PREFIX, or None."""
    if not _KEY_PREFIX.fullmatch(value):
        return (
            "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(the bot adds the ':'), got {value!r}"
        )
    return None


def parse_cluster_url(url: str) -> ClusterUrl:
    scheme, rest = url.split("://", 1)
    if scheme not in CLUSTER_SCHEMES:
        raise RedisUrlError(URL_FORMS)
    netloc, _, path = rest.partition("/")
    if path.strip("/") or "?" in netloc:
        raise RedisUrlError(
            "a cluster URL has no database or options (a cluster has database 0 only): "
            "redis+cluster://host:port[,host:port…]"
        )
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if userinfo else (None, None)
    return ClusterUrl(
        nodes=[_host_and_port(part, CLUSTER_PORT, "a cluster") for part in hosts.split(",")],
        tls=CLUSTER_SCHEMES[scheme],
        username=username,
        password=password,
    )


def parse_sentinel_url(url: str) -> SentinelUrl:
    scheme, rest = url.split("://", 1)
    if scheme not in SENTINEL_SCHEMES:
        raise RedisUrlError(URL_FORMS)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if userinfo else (None, None)
    sentinels = [_host_and_port(part, SENTINEL_PORT, "a Sentinel") for part in hosts.split(",")]
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise RedisUrlError("a Sentinel URL needs the service name after the hosts: …/mymaster")
    if db and not db.isdigit():
        raise RedisUrlError(f"the database after the service name must be a number, got {db!r}")
    # A "+" in a password is a plus, as it is in the user-info part (form encoding reads a space).
    options = parse_qs(query.replace("+", "%2B"))
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


def connection_pool(
    url: str, key_prefix: str = CLUSTER_KEY_PREFIX, **options: Any
) -> tuple[redis.ConnectionPool, Sentinel | None]:
    """A pool that waits for a free connection, and the Sentinel client behind it if any (the
    caller closes it). In a cluster, the connections go to the slot of `key_prefix`'s hash tag.
    `options` are the connections' settings (timeouts, retries, protocol)."""
    if is_cluster_url(url):
        where = parse_cluster_url(url)
        pool = redis.BlockingConnectionPool(
            connection_class=ClusterSlotSSLConnection if where.tls else ClusterSlotConnection,
            cluster=ClusterSlot(key_slot(key_prefix.encode()), where.nodes),
            username=where.username,
            password=where.password,
            **options,
        )
        return pool, None
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


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _host_and_port(part: str, default_port: int, kind: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6 address]:port`."""
    host, port = part, ""
    if part.startswith("["):
        host, _, after = part[1:].partition("]")
        port = after.removeprefix(":")
    elif part.count(":") == 1:
        host, port = part.split(":")
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise RedisUrlError(f"{kind} URL lists host:port pairs separated by commas, got {part!r}")
    return host, int(port or default_port)
