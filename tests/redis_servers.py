"""``redis-server`` processes a test owns (no mocks), for the tests that kill, restart or
reconfigure Redis: each on a free loopback port and a directory of the test's own, with the
configuration the test asks for, killed by its PID (never by name), started again on the
same port and directory to lose its data (no persistence) or keep it (an AOF).

Readiness is the server's own ``Ready to accept connections`` line (bounded), not a polled
port. A missing ``redis-server`` fails the test: these tests are never skipped.

:class:`RedisClusterServers` starts a Redis Cluster of such servers (three primaries, no
replicas) for the tests of tests/cluster/: synchronous, for a session-scoped fixture.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

__all__ = [
    "AOF_ALWAYS",
    "NO_PERSISTENCE",
    "READY",
    "RedisClusterServers",
    "RedisServer",
    "free_port",
    "redis_server",
    "redis_server_binary",
]

NO_PERSISTENCE = ("--save", "", "--appendonly", "no")
"""A restart (or a kill) loses every key."""
AOF_ALWAYS = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")
"""Every write is in the append-only file before it is answered: a kill -9 loses nothing."""
READY = "Ready to accept connections"
"""What redis-server logs once it answers."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(said: list[str] | str) -> bool:
    """Whether a redis-server that exited said its port was in use."""
    text = said if isinstance(said, str) else "\n".join(said)
    return "Address already in use" in text


def redis_server_binary() -> str:
    """The ``redis-server`` on PATH; fails the test (never skips it) if there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: these tests start a server of their own")
    return binary


class RedisServer:
    """A ``redis-server`` on ``127.0.0.1:port`` with ``config`` (``NO_PERSISTENCE`` unless
    told), its files in ``directory``. ``port_option`` names the listening option (TLS
    servers give ``--tls-port``, with ``--port 0`` in ``config``)."""

    def __init__(
        self,
        directory: Path,
        config: tuple[str, ...] = NO_PERSISTENCE,
        *,
        port_option: str = "--port",
    ) -> None:
        self.port = free_port()
        self.port_option = port_option
        self.command = [
            *(redis_server_binary(), port_option, str(self.port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), *config),
        ]
        self.process: anyio.abc.Process | None = None
        self.started = False  # once started, it keeps its port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server; return once it says it accepts connections (10 s at most).

        The first start of a server whose port was taken since it was picked tries again on
        other ports (three times at most); a restart keeps its port, as its clients expect."""
        for _ in range(3):
            process = await anyio.open_process(self.command, stderr=subprocess.STDOUT)
            self.process = process
            assert process.stdout is not None
            seen = b""
            with anyio.move_on_after(10):
                async for chunk in process.stdout:
                    seen += chunk
                    if READY.encode() in seen:
                        self.started = True
                        return
            await self.kill()
            said = seen.decode(errors="replace")
            if self.started or not _port_taken(said):
                break
            self._use_port(free_port())
        pytest.fail(f"redis-server did not start: {said}")

    def _use_port(self, port: int) -> None:
        self.command[self.command.index(self.port_option) + 1] = str(port)
        self.port = port

    async def kill(self) -> None:
        """SIGKILL the server (by its PID: no shutdown, no final save) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # it exited on its own
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()

    async def restart(self) -> None:
        """Kill the server and start it again, same port, same directory, same config."""
        await self.kill()
        await self.start()


@asynccontextmanager
async def redis_server(
    directory: Path, config: tuple[str, ...] = NO_PERSISTENCE, *, port_option: str = "--port"
) -> AsyncIterator[RedisServer]:
    """A started :class:`RedisServer`, killed at the end."""
    server = RedisServer(directory, config, port_option=port_option)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


class RedisClusterServers:
    """A Redis Cluster of ``nodes`` primaries (no replicas) on free loopback ports, each a
    ``redis-server --cluster-enabled yes`` without persistence, its files in ``directory``.

    :meth:`start` starts the servers (each ready once it logs :data:`READY`), joins them
    with ``redis-cli --cluster create`` and returns once every node's ``CLUSTER INFO``
    says ``cluster_state:ok``; anything else fails the test (never skips it), with what
    the servers and redis-cli said. :meth:`stop` kills the servers by their PIDs. Every
    wait is bounded.
    """

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.directory = directory
        self.ports = [free_port() for _ in range(nodes)]
        # Each node's cluster bus port (by default its port + 10000, which may be taken or
        # past 65535).
        self.bus_ports = [free_port() for _ in range(nodes)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.readers: list[threading.Thread] = []
        self.output: dict[int, list[str]] = {port: [] for port in self.ports}

    @property
    def url(self) -> str:
        """A URL of one node (a cluster client discovers the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        binary = redis_server_binary()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not on PATH: the cluster tests create a cluster with it")
        for node in range(len(self.ports)):
            self._start_node(binary, node)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        try:
            created = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                timeout=20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.fail("redis-cli --cluster create did not finish within 20 s")
        if created.returncode != 0:
            said = (created.stdout + created.stderr).decode(errors="replace")
            self.fail(f"redis-cli --cluster create failed ({created.returncode}): {said}")
        self._wait_until_ok(cli, deadline=time.monotonic() + 15)

    def _start_node(self, binary: str, node: int) -> None:
        """Start node ``node`` and wait (10 s at most) until it is ready. A free port can be
        taken between its pick and the server's bind (another test's server, a client's
        ephemeral port): then the node tries again on other ports, three times at most."""
        for _ in range(3):
            port, bus = self.ports[node], self.bus_ports[node]
            self.output[port] = []
            ready = threading.Event()
            command = [
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                *("--cluster-port", str(bus)),
                *("--dir", str(self.directory), *NO_PERSISTENCE),
            ]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.processes.append(process)
            reader = threading.Thread(
                target=self._read, args=(process, port, ready), daemon=True, name=f"redis {port}"
            )
            reader.start()
            self.readers.append(reader)
            ready.wait(10)
            if any(READY in line for line in self.output[port]):
                return
            if process.poll() is None or not _port_taken(self.output[port]):
                break
            del self.output[port]  # it lost the race for its port: pick others
            self.ports[node], self.bus_ports[node] = free_port(), free_port()
        self.fail(f"redis-server on port {self.ports[node]} did not start")

    def _read(self, process: subprocess.Popen[bytes], port: int, ready: threading.Event) -> None:
        """Keep what a server says (so that its pipe never fills); set ``ready`` at READY,
        or when the server has exited."""
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output[port].append(line)
            if READY in line:
                ready.set()
        ready.set()

    def _wait_until_ok(self, cli: str, *, deadline: float) -> None:
        """Until every node says ``cluster_state:ok`` (a bounded re-read: the nodes agree
        on the slots over the cluster bus, which nothing notifies)."""
        pending = list(self.ports)
        while pending:
            info = subprocess.run(
                [cli, "-p", str(pending[0]), "cluster", "info"],
                capture_output=True,
                timeout=5,
                check=False,
            )
            if b"cluster_state:ok" in info.stdout:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                self.fail(f"node {pending[0]} never said cluster_state:ok: {info.stdout!r}")
            time.sleep(0.05)

    def fail(self, why: str) -> None:
        """Stop the servers and fail the test, with what each server said."""
        self.stop()
        said = "\n".join(
            f"--- redis-server {port}:\n" + "\n".join(lines[-20:])
            for port, lines in self.output.items()
        )
        pytest.fail(f"cannot start a Redis Cluster: {why}\n{said}")

    def stop(self) -> None:
        """SIGKILL every server (by its PID) and reap it."""
        processes, self.processes = self.processes, []
        readers, self.readers = self.readers, []
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=10)
        for reader in readers:
            reader.join(timeout=5)  # it reads to the end of the dead server's output
        for process in processes:
            if process.stdout is not None:
                process.stdout.close()
