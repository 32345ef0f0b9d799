"""``python -m upstream_simulator``: serve until SIGINT/SIGTERM, configured by ``SIMULATOR_*`` env vars."""

from __future__ import annotations

import asyncio
import logging
import signal

from upstream_simulator.server import start
from upstream_simulator.settings import SimulatorSettings


async def serve(settings: SimulatorSettings) -> None:
    """Run the simulator until the process is asked to stop."""
    runner, port = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # One line on stdout so scripts (and people) know where it listens.
    print(f"upstream simulator listening on http://{settings.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(SimulatorSettings()))


if __name__ == "__main__":
    main()
