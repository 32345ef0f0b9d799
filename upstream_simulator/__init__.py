"""Upstream simulator: the only fake in the system.

An aiohttp server speaking the real wire formats of the Volcengine Ark,
Volcengine visual (Jimeng) and OpenAI endpoints the providers use, with
latency, error and rate-limit injection and request statistics controlled
through ``/_sim/*``. Point the real SDKs at it through their base-URL settings.

Run it with ``python -m upstream_simulator``; embed it with ``start`` (async)
or ``SimulatorThread`` (sync); drive it with ``upstream_simulator.control.SimulatorControl``.
"""

from upstream_simulator.faults import ENDPOINTS
from upstream_simulator.server import SimulatorThread, build_app, start
from upstream_simulator.settings import SimulatorSettings

__all__ = ["ENDPOINTS", "SimulatorSettings", "SimulatorThread", "build_app", "start"]
