"""A real dashboard server for the browser tests and the screenshots: ``asaga dashboard``
(uvicorn) in a subprocess on a free loopback port, against a Redis store seeded with runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from asaga import SagaFailed
from asaga.runs import RedisRunStore

from .sagas import Flaky, Shop, seed

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "operator-token-for-tests"
CHROMIUM = os.environ.get("ASAGA_CHROMIUM", "/usr/bin/chromium")


@dataclass(frozen=True)
class Server:
    """A running dashboard: its URL and the runs seeded in its store."""

    url: str
    runs: dict[str, str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def seed_store(redis_url: str, prefix: str) -> dict[str, str]:
    """The runs the browser sees: a few succeeded Shop runs, a failed Flaky one, a halted
    Approval, a Paid waiting for its payment."""
    async with RedisRunStore.from_url(redis_url, prefix=prefix) as runs:
        for n in range(4):
            await Shop.run(order_id=f"o-1{n}", email=f"c{n}@example.com", runs=runs)
        try:
            await Flaky.run(order_id="o-9", runs=runs)
        except SagaFailed as exc:
            failed = exc.run_id
        ids = await seed(runs)
    return {**ids, "failed": failed}


@contextmanager
def dashboard_server(redis_url: str, prefix: str, *options: str) -> Iterator[Server]:
    """Seed the store, start ``asaga dashboard`` on it (token: TOKEN; ``options`` added to
    its command line), yield it; stop it."""
    ids = anyio.run(seed_store, redis_url, prefix)
    port = free_port()
    command = [
        sys.executable, "-m", "asaga", "dashboard",
        "--redis", redis_url, "--prefix", prefix, "--port", str(port), "--token", TOKEN,
        *options,
    ]  # fmt: skip
    for saga in ("Shop", "Approval", "Paid", "Flaky"):
        command += ["--saga", f"tests.dashboard.sagas:{saga}"]
    env = {**os.environ, "DASHBOARD_TEST_APPROVE": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # bounded: up to ~20 s for the server to listen
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"asaga dashboard exited ({process.returncode}): {output}")
            try:
                if httpx.get(url + "/static/dashboard.css", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"asaga dashboard did not answer on {url}")
        yield Server(url=url, runs=ids)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
