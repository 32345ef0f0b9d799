"""``python -m upstream_simulator``: serve until SIGINT/SIGTERM, configured by ``SIMULATOR_*`` env vars."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from upstream_simulator.faults import ENDPOINTS, TRANSPORT_FAULTS, FaultSpec
from upstream_simulator.server import start
from upstream_simulator.settings import SimulatorSettings

DESCRIPTION = """\
The upstream simulator: Volcengine Ark, the Volcengine visual API (Jimeng) and
OpenAI, on their real wire formats, for the vendors' SDKs to talk to. It serves
until SIGINT or SIGTERM and prints one line saying where it listens. It is
configured by environment variables only (upstream_simulator/README.md)."""


def _epilog() -> str:
    settings = "\n".join(
        f"  SIMULATOR_{name.upper():<22} default: {field.default!r}"
        for name, field in SimulatorSettings.model_fields.items()
        if name != "faults"
    )
    keys = ", ".join(FaultSpec.model_fields)
    transports = "\n".join(f"  {name:<12} {what}" for name, what in TRANSPORT_FAULTS.items())
    return (
        f"environment:\n{settings}\n"
        "  SIMULATOR_FAULTS           JSON: endpoint (or *) -> fault settings, e.g.\n"
        '                             \'{"*": {"latency_s": 0.05}, "ark.images": {"rate_limit": 10}}\'\n\n'
        f"fault settings (also POST /_sim/faults at run time): {keys}\n\n"
        f"transport faults:\n{transports}\n\n"
        f"endpoints: {', '.join(ENDPOINTS)}\n\n"
        "control API: GET /_sim/health, GET|POST|DELETE /_sim/faults, GET /_sim/stats, POST /_sim/reset"
    )


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``--help`` describes the settings; anything else is refused (settings come from the env)."""
    parser = argparse.ArgumentParser(
        prog="python -m upstream_simulator",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(SimulatorSettings()))


if __name__ == "__main__":
    main()
