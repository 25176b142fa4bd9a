"""Run a real redis-server process for tests (no fakes), with start/stop/kill/restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LOG_NAME = "redis.log"


def find_redis_server() -> str:
    """Return the path of the redis-server binary."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server not found: install it (apt-get install redis-server)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_port_with_bus() -> int:
    """A free port whose cluster bus port (+ 10000) is free too."""
    for _ in range(100):
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port with a free cluster bus port")


def _kill_quietly(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _answers_ping(port: int, pid: int) -> bool:
    """True when the server on `port` answers PING and is process `pid`.

    The pid check stops a stranger already holding the port from passing for our server.
    A server still loading its AOF answers LOADING, which counts as not ready.
    """
    # No client-side retries: the caller polls, and retries would hide a dead process.
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping()) and client.info("server")["process_id"] == pid
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """A redis-server child process on 127.0.0.1, persisting into `data_dir`.

    The port is picked once, so clients keep working across restart() and kill()/start().
    """

    def __init__(self, data_dir: Path, *, appendonly: bool = True, replica_of: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.appendonly = appendonly
        self.replica_of = replica_of  # the port of a primary on 127.0.0.1 to replicate
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def start(self) -> None:
        """Spawn redis-server and wait until it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once (tests start only one)
        ]  # fmt: skip
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.appendonly:
            # fsync every write, so kill -9 loses nothing a client saw acknowledged.
            args += ["--appendfsync", "always"]
        # Redis logs to stdout by default; sending stdout/stderr to the log file also captures
        # errors printed before its own logging starts (bad arguments, port in use).
        self._spawn(args)

    def _spawn(self, args: list[str]) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        # Safety net: a test that crashes before stop()/kill() must not leak the process.
        weakref.finalize(self, _kill_quietly, self._process)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self._process.returncode}\n{self._log_tail()}"
                )
            if _answers_ping(self.port, self._process.pid):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT}s\n"
            f"{self._log_tail()}"
        )

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM): redis flushes the AOF before exiting."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, to imitate a crash or an outage."""
        if self._process is None:
            return
        _kill_quietly(self._process)
        self._process = None

    def wait_for_replica(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until a replica has every write made here so far (Redis's WAIT)."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout + 1)
        try:
            if client.wait(1, int(timeout * 1000)) < 1:
                raise RuntimeError(f"no replica of port {self.port} caught up within {timeout}s")
        finally:
            client.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no redis log)"
        return "\n".join(text.splitlines()[-lines:])


class SentinelServer(RedisServer):
    """A Redis Sentinel (redis-server in sentinel mode) on 127.0.0.1, watching one primary as
    `service`, quick to call it down (half a second) and to fail over."""

    def __init__(self, data_dir: Path, *, primary_port: int, service: str = "mymaster") -> None:
        super().__init__(data_dir, appendonly=False)
        self.primary_port = primary_port
        self.service = service

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"  # Sentinel rewrites its config as it learns
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 500\n"
            f"sentinel failover-timeout {self.service} 5000\n"
        )
        super().start()

    def _spawn(self, args: list[str]) -> None:
        super()._spawn([find_redis_server(), str(self.data_dir / "sentinel.conf"), "--sentinel"])

    def primary_port_now(self) -> int:
        """The port of the Redis this Sentinel calls the primary now."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, decode_responses=True)
        try:
            return int(client.sentinel_get_master_addr_by_name(self.service)[1])
        finally:
            client.close()

    def replicas_known(self) -> int:
        """How many healthy replicas of the primary this Sentinel knows."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, decode_responses=True)
        try:
            replicas = client.sentinel_slaves(self.service)
        finally:
            client.close()
        return sum(1 for r in replicas if not r.get("is_sdown") and not r.get("is_odown"))


class ClusterNode(RedisServer):
    """A redis-server in cluster mode on 127.0.0.1, quick to call a peer down (half a second).
    Its cluster bus listens on its port + 10000, as on every Redis version, so both are free."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, appendonly=False)
        self.port = _free_port_with_bus()
        self.bus_port = self.port + 10000

    def _spawn(self, args: list[str]) -> None:
        super()._spawn(
            [
                *args,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout", "500",
            ]
        )  # fmt: skip

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def node_id(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def is_primary(self) -> bool:
        with self.client() as client:
            return client.info("replication")["role"] == "master"

    def cluster_info(self) -> dict[str, str]:
        with self.client() as client:
            text = client.execute_command("CLUSTER", "INFO")
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


class RedisCluster:
    """A real Redis Cluster: three primaries sharing the 16,384 slots and one replica of the
    primary that serves `slot`, formed by hand (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE)."""

    def __init__(self, data_dir: Path, *, slot: int) -> None:
        self.slot = slot
        self.primaries = [ClusterNode(data_dir / f"primary{i}") for i in range(3)]
        self.replica = ClusterNode(data_dir / "replica")
        self.ranges = [(0, 5460), (5461, 10922), (10923, 16383)]

    @property
    def nodes(self) -> list[ClusterNode]:
        return [*self.primaries, self.replica]

    @property
    def owner(self) -> ClusterNode:
        """The primary that was given `slot`."""
        return next(n for n, (a, b) in zip(self.primaries, self.ranges, strict=True) if a <= self.slot <= b)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node, (first, last) in zip(self.primaries, self.ranges, strict=True):
            with node.client() as client:  # ADDSLOTS, not ADDSLOTSRANGE: Redis 6 has no range form
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        with self.primaries[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self.wait_until(lambda: all(n.cluster_info().get("cluster_known_nodes") == "4" for n in self.nodes))
        owner_id = self.owner.node_id()
        with self.replica.client() as client:
            client.execute_command("CLUSTER", "REPLICATE", owner_id)
        self.wait_until(lambda: all(n.cluster_info().get("cluster_state") == "ok" for n in self.nodes))
        self.wait_until(self.replica_in_sync)

    def replica_in_sync(self) -> bool:
        with self.replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def seed_url(self, node: ClusterNode) -> str:
        return f"redis+cluster://127.0.0.1:{node.port}"

    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the cluster did not settle within {timeout}s")
