"""``redis-server`` processes a test owns (no mocks), for the tests that kill, restart or
reconfigure Redis: each on a free loopback port and a directory of the test's own, with the
configuration the test asks for, killed by its PID (never by name), started again on the
same port and directory to lose its data (no persistence) or keep it (an AOF).

Readiness is the server's own ``Ready to accept connections`` line (bounded), not a polled
port. A missing ``redis-server`` fails the test: these tests are never skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
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
        self.command = [
            *(redis_server_binary(), port_option, str(self.port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), *config),
        ]
        self.process: anyio.abc.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server; return once it says it accepts connections (10 s at most)."""
        process = await anyio.open_process(self.command, stderr=subprocess.STDOUT)
        self.process = process
        assert process.stdout is not None
        seen = b""
        with anyio.move_on_after(10):
            async for chunk in process.stdout:
                seen += chunk
                if READY.encode() in seen:
                    return
        await self.kill()
        pytest.fail(f"redis-server did not start: {seen.decode(errors='replace')}")

    async def kill(self) -> None:
        """SIGKILL the server (by its PID: no shutdown, no final save) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
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
