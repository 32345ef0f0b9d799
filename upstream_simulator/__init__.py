"""Upstream simulator: the only fake in the system.

An aiohttp server speaking the real wire formats of the Volcengine Ark,
Volcengine visual (Jimeng) and OpenAI endpoints the providers use, as strict as
the vendors (models from ``catalogue.toml``, parameters per model, counted
limits, expiring media links), with latency, error, rate-limit and transport
fault injection and request statistics controlled through ``/_sim/*``. Point
the real SDKs at it through their base-URL settings. README.md says what it
refuses and why.

Run it with ``python -m upstream_simulator`` (``--help`` lists the settings);
embed it with ``start`` (async) or ``SimulatorThread`` (sync); drive it with
``upstream_simulator.control.SimulatorControl``.
"""

from upstream_simulator.faults import ENDPOINTS
from upstream_simulator.server import SimulatorThread, build_app, start
from upstream_simulator.settings import SimulatorSettings

__all__ = ["ENDPOINTS", "SimulatorSettings", "SimulatorThread", "build_app", "start"]
