"""A separate OS process that parks one durable run and then idles until it is killed
(used by tests/runs/test_parking.py).

    python tests/runs/parking_worker.py URL PREFIX ORDER_ID

Prints ``parked <run id>`` once the run is parked.
"""

import sys
from pathlib import Path

import anyio
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asaga import RunParked
from asaga.runs import RedisRunStore
from tests.runs.test_parking import Order

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def main(url: str, prefix: str, order_id: str) -> None:
    async with RedisRunStore.from_url(url, prefix=prefix) as runs:
        try:
            await Order.run(order_id=order_id, runs=runs)
        except RunParked as parked:
            print("parked", parked.run_id, flush=True)
        await anyio.sleep(3600)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
