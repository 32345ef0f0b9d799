"""Simulator settings, read from ``SIMULATOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from upstream_simulator.faults import FaultSpec, check_endpoint


class SimulatorSettings(BaseSettings):
    """Configuration of the upstream simulator.

    ``faults`` maps an endpoint name (or ``*``) to a partial fault config, e.g.
    ``SIMULATOR_FAULTS='{"*": {"latency_s": 0.05}, "ark.images": {"error_rate": 0.1}}'``.
    """

    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Address the simulator binds."""
    port: int = Field(default=9100, ge=0, le=65535)
    """Port of every simulated vendor API (0 picks a free port: tests)."""
    public_url: str | None = None
    """Base of returned media URLs; default http://HOST:PORT."""
    ark_api_key: str = "sim-ark-key"
    """The Ark key the simulator accepts."""
    volc_access_key: str = "sim-ak"
    """The visual API access key the simulator accepts."""
    volc_secret_key: str = "sim-sk"
    """The visual API secret key the simulator checks signatures with."""
    openai_api_key: str = "sim-openai-key"
    """The OpenAI key the simulator accepts."""
    video_seconds: float = Field(default=5.0, ge=0)
    """How long a simulated video job runs."""
    catalogue_path: Path | None = None
    """The vendors' model catalogue (default: upstream_simulator/catalogue.toml)."""
    retired_grace: bool = True
    """Serve retired models the catalogue marks `grace` (the gateway's seed models); false: refuse them too."""
    faults: dict[str, FaultSpec] = Field(default_factory=dict)
    """Faults per endpoint name (or *) as JSON, e.g. {"ark.images": {"error_rate": 0.1}}."""

    @field_validator("faults")
    @classmethod
    def _known_endpoints(cls, value: dict[str, FaultSpec]) -> dict[str, FaultSpec]:
        for name in value:
            check_endpoint(name)
        return value

    def public_base(self, bound_port: int) -> str:
        """The base URL for media links, given the port actually bound."""
        if self.public_url:
            return self.public_url.rstrip("/")
        # A wildcard bind address is not something a client can connect to.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{bound_port}"
