"""Redis that is really unreachable, for the tests of infrastructure errors (no mocks).

- :func:`closed_port` is a loopback port nothing listens on: connecting is refused;
- :func:`throwaway_redis` starts a ``redis-server`` of the test's own (no persistence) on a
  free loopback port; the test kills it (by its PID, :meth:`RedisServer.kill`) to take
  Redis away from an application that was using it. It is synchronous, for tests that
  kill Redis from under a running app; tests that restart Redis use
  :mod:`tests.redis_servers`, whose port, binary and readiness line it shares.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.redis_servers import NO_PERSISTENCE, READY, free_port, redis_server_binary

__all__ = ["RedisServer", "closed_port", "throwaway_redis"]


def closed_port() -> int:
    """A loopback TCP port that was free a moment ago and has no listener."""
    return free_port()


class RedisServer:
    """A ``redis-server`` process this test owns."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def kill(self) -> None:
        """SIGKILL the server (this process only, by PID) and wait until it is gone."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def throwaway_redis() -> Iterator[RedisServer]:
    """Start a ``redis-server`` on a free loopback port; kill it at the end."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"),
            *(*NO_PERSISTENCE, "--daemonize", "no"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,  # unbuffered: what select() says is readable is all there is to read
    )
    server = RedisServer(process, port)
    try:
        assert process.stdout is not None
        # Wait for its "Ready to accept connections" line (bounded), not by polling a port.
        # Raw chunks, not lines: a buffered readline() may swallow the ready line along
        # with the one before it, and select() then waits for nothing more.
        fd = process.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + 10
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while READY.encode() not in seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    pytest.fail(f"redis-server did not start within 10 s: {seen!r}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    pytest.fail(f"redis-server exited with {process.wait()}: {seen!r}")
                seen += chunk
        yield server
    finally:
        server.kill()
        if process.stdout is not None:
            process.stdout.close()
