"""The test harness's own redis-server starts survive a port taken between its pick and the
server's bind (tests/redis_servers.py): the first start tries again on another port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.redis_servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_first_start_moves_off_a_taken_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RedisServer(tmp_path)
        server._use_port(port)  # as if another process took the picked port
        await server.start()
        try:
            assert server.port != port
            client = aioredis.Redis.from_url(server.url)
            assert await client.ping()
            await client.aclose()
        finally:
            await server.kill()
